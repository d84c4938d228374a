"""Progress across processes: tasks write small JSON files, the main process shows them with rich."""

import json
import threading
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.io.files import write_json_atomic


class TaskProgress:
    """Counts records/bytes a task has read; writes them at most every `every` seconds."""

    def __init__(self, folder: Path | None, rank: int, every: float = 0.5):
        self.path = Path(folder) / f"{rank:05d}.json" if folder else None
        self.every = every
        self.records = self.bytes = 0
        self._last = 0.0

    def add(self, records: int, nbytes: int) -> None:
        self.records += records
        self.bytes += nbytes
        now = time.monotonic()
        if self.path and now - self._last >= self.every:
            self._last = now
            self.flush()

    def flush(self) -> None:
        if self.path:
            write_json_atomic(self.path, {"records": self.records, "bytes": self.bytes})


def read_progress(folder: Path) -> tuple[int, int]:
    records = nbytes = 0
    for p in Path(folder).glob("*.json"):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        records += data["records"]
        nbytes += data["bytes"]
    return records, nbytes


class SegmentProgress:
    """A rich progress bar for one segment, fed by polling its tasks' progress files."""

    def __init__(self, console, label: str, folder: Path, total_bytes: int, enabled: bool = True):
        self.folder, self.total, self.enabled = Path(folder), max(total_bytes, 1), enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[records]:,} records · {task.fields[rate]:.1f} MB/s"), TimeElapsedColumn(),
            console=console, transient=False, disable=not enabled,
        )
        self.task = self.progress.add_task(label, total=self.total // 2**20 or 1, records=0, rate=0.0)
        self._stop = threading.Event()
        self._start = time.monotonic()

    def _poll(self) -> None:
        records, nbytes = read_progress(self.folder)
        rate = nbytes / 2**20 / max(time.monotonic() - self._start, 1e-6)
        self.progress.update(self.task, completed=min(nbytes, self.total) // 2**20, records=records, rate=rate)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            self._poll()

    def __enter__(self):
        self.progress.start()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll()
        self.progress.stop()
