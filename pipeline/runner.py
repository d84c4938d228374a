"""`pipeline run`: plan inputs, split the stage list into segments at global stages, run each segment
and cluster phase with an executor (resumable task by task), then write stats, manifest and card."""

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from pipeline.card import import_plotting_in_background, write_card
from pipeline.config import RunConfig, StageSpec
from pipeline.errors import RunFailure, UserError
from pipeline.executors.dask import DaskPipelineExecutor, connect
from pipeline.executors.local import LocalExecutor
from pipeline.executors.pool import WorkerPool
from pipeline.io.files import CorruptIntermediate, is_intact, write_json_atomic, write_table_atomic
from pipeline.io.inputs import InputPlan, plan_inputs
from pipeline.io.readers import IDS_SCHEMA, InputReader, IntermediateReader
from pipeline.io.writers import ParquetShardWriter
from pipeline.progress import SegmentProgress
from pipeline.stats import languages, merge_stages, stage_parts, summary_table, totals
from pipeline.step import GlobalStage

REMOVAL_COLUMNS = [("removed_by", pa.string()), ("removal_reason", pa.string()),
                   ("kept_repo_name", pa.string()), ("kept_path", pa.string())]
MAX_PARTITIONS = 64
CLUSTERS_DIR = "clusters"  # what global stages publish for `optout apply` (private, like removed/)
PARTITION_BYTES = 2 * 2**30  # input bytes per cluster partition: small corpora decide in one task
log = logging.getLogger("codecurate")


@dataclass
class Job:
    """One datatrove executor run: a segment of row-level steps, or a global stage's cluster phase."""

    name: str
    steps: list
    tasks: int
    label: str
    checked_files: list[Path] = field(default_factory=list)  # intermediates to verify on --resume
    feeds: str | None = None  # the global stage whose signatures this segment ends with


@dataclass
class RunOptions:
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def config_fingerprint(config: RunConfig, specs: list[StageSpec], stage_info: dict | None = None) -> str:
    """What must match for --resume: inputs, stages and output format (not the executor), and what
    stages report about their resources (`stage_info`, e.g. the opt-out registry version)."""
    data = {"input": config.input.model_dump(), "output": config.output.model_dump(),
            "stages": [[s.kind, s.name, s.options.model_dump()] for s in specs]}
    if stage_info:
        data["stage_info"] = stage_info
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_output(out: Path, fingerprint: str, opts: RunOptions) -> None:
    manifest = out / "manifest.json"
    ours = manifest.exists() or (out / ".work").exists()
    if out.exists() and any(out.iterdir()):
        if opts.overwrite:
            if not ours:
                raise UserError(f"{out}: not a codecurate output directory; refusing to overwrite it")
            shutil.rmtree(out)
        elif opts.resume:
            if not ours:
                raise UserError(f"{out}: not a codecurate output directory; nothing to resume")
            previous = json.loads(manifest.read_text()).get("config_fingerprint") if manifest.exists() else None
            if previous != fingerprint:
                raise UserError(f"{out}: holds a run of another config; use --overwrite or another --output")
        else:
            raise UserError(f"{out}: output directory holds another run; use --resume or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for pkg in ("codecurate", "datatrove", "pyarrow", "duckdb", "pydantic"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


class Runner:
    def __init__(self, config: RunConfig, specs: list[StageSpec], opts: RunOptions, console: Console):
        from stages import STAGES

        self.config, self.specs, self.opts, self.console = config, specs, opts, console
        self.out = Path(config.output.path)
        self.work = self.out / ".work"
        self.stages = [STAGES[s.kind](s.name, s.options) for s in specs]
        # stages may expose manifest_info() -> dict: merged into manifest.json (e.g. optout_registry_version)
        self.stage_info = {k: v for s in self.stages if hasattr(s, "manifest_info")
                           for k, v in s.manifest_info().items()}
        self.fingerprint = config_fingerprint(config, specs, self.stage_info)

    # -- building ---------------------------------------------------------------------------------
    def removed_writer(self, stage_name: str, schema: pa.Schema) -> ParquetShardWriter:
        out = self.config.output
        return ParquetShardWriter(self.out / "removed" / stage_name, with_columns(schema, REMOVAL_COLUMNS),
                                  compression_level=out.compression_level, max_shard_bytes=out.max_shard_bytes,
                                  row_group_bytes=out.row_group_bytes, name=f"removed/{stage_name}")

    def build_jobs(self, plan: InputPlan) -> list[Job]:
        tasks = len(plan.tasks)
        partitions = max(1, min(tasks, MAX_PARTITIONS, -(-plan.total_bytes // PARTITION_BYTES)))
        schema = plan.schema
        reader = InputReader(plan.units, plan.tasks, schema, content_from=self.config.input.content_from,
                             max_file_bytes=self.config.input.max_file_bytes,
                             removed_writer=self.removed_writer("read", schema), ids_dir=self.work / "input_ids",
                             progress_dir=self.work / "seg0" / "progress")
        jobs: list[Job] = []
        steps: list = [reader]
        labels: list[str] = ["read"]
        seg = 0
        for stage in self.stages:
            if isinstance(stage, GlobalStage):
                workdir = self.work / stage.name
                seg_dir = self.work / f"seg{seg}"
                # with nothing before the stage that changes records, the next segment re-reads the input
                replay = len(steps) == 1 and steps[0] is reader
                steps.append(stage.signature_step(workdir, schema, partitions))
                if not replay:
                    steps.append(ParquetShardWriter(seg_dir / "data", schema, compression="lz4",
                                                    compression_level=None, max_shard_bytes=2**62, checksum=True,
                                                    name="intermediate"))
                labels.append(f"{stage.name} (signatures)")
                jobs.append(Job(f"seg{seg}", steps, tasks, " → ".join(labels),
                                checked_files=[seg_dir / "data", workdir / "sig"], feeds=stage.name))
                for phase, step, phase_tasks in stage.cluster_phases(workdir, tasks, partitions):
                    jobs.append(Job(f"{stage.name}.{phase}", [step], phase_tasks, f"{stage.name} ({phase})",
                                    checked_files=[workdir / phase]))
                seg += 1
                progress = self.work / f"seg{seg}" / "progress"
                source = reader.replay(progress) if replay else IntermediateReader(seg_dir / "data", progress)
                steps = [source, stage.filter_step(workdir, self.removed_writer(stage.name, schema))]
                labels = [stage.name]
            else:
                stage.exclusion_writer = self.removed_writer(stage.name, schema)
                steps.append(stage)
                labels.append(stage.name)
            schema = with_columns(schema, list(stage.added_columns.items()))
        out = self.config.output
        steps.append(ParquetShardWriter(self.out / "data", schema, compression_level=out.compression_level,
                                        max_shard_bytes=out.max_shard_bytes, row_group_bytes=out.row_group_bytes,
                                        name="data", count_languages=True))
        jobs.append(Job(f"seg{seg}", steps, tasks, " → ".join(labels)))
        return jobs

    # -- running ----------------------------------------------------------------------------------
    def logging_dir(self, job: Job) -> Path:
        return self.out / "logs" / job.name

    def invalidate_corrupt(self, jobs: list[Job]) -> None:
        """On --resume: a completed job whose checksummed intermediates fail is redone, with all after it."""
        for i, job in enumerate(jobs):
            done = self.logging_dir(job) / "completions"
            if not done.is_dir() or not any(done.iterdir()):
                continue
            bad = [p for folder in job.checked_files if folder.is_dir()
                   for p in folder.glob("*.parquet") if not is_intact(p)]
            if bad:
                log.warning("corrupt intermediate %s: redoing %s and later jobs", bad[0], job.name)
                self.console.print(f"[yellow]corrupt intermediate {bad[0].name} in {bad[0].parent}: "
                                   f"recomputing {job.name} and what follows")
                for later in jobs[i:]:
                    shutil.rmtree(self.logging_dir(later) / "completions", ignore_errors=True)
                return

    def executor_for(self, job: Job):
        common = {"logging_dir": str(self.logging_dir(job)), "stderr_log": str(self.out / "logs" / "tasks.log")}
        if self.client is not None:
            return DaskPipelineExecutor(job.steps, tasks=job.tasks, client=self.client, **common)
        return LocalExecutor(job.steps, tasks=job.tasks, pool=self.pool, **common)

    def run_job(self, job: Job, total_bytes: int) -> None:
        executor = self.executor_for(job)
        start = time.monotonic()
        with SegmentProgress(self.console, job.label, self.work / job.name / "progress", total_bytes,
                             enabled=self.opts.progress and job.name.startswith("seg")):
            executor.run()
        if isinstance(executor, DaskPipelineExecutor) and (retried := executor.retries()):
            self.retries[job.name] = retried
            self.console.print(f"[yellow]{job.name}: {retried} task retries (a worker was lost)")
        log.info("job %s done in %.1fs", job.name, time.monotonic() - start)

    def run(self) -> dict:
        ex = self.config.executor
        self.client, cluster = connect(ex.scheduler, ex.workers) if ex.kind == "dask" else (None, None)
        pooled = ex.kind == "local" and ex.workers > 1
        self.pool = WorkerPool(ex.workers, [s.kind for s in self.specs]) if pooled else None
        self.retries: dict[str, int] = {}
        try:
            if self.client is not None:
                self.console.print(f"Dask dashboard: {self.client.dashboard_link}")
            return self._run()
        finally:
            if self.pool is not None:
                self.pool.close()
            if self.client is not None:
                self.client.close()
            if cluster is not None:
                cluster.close()

    def _run(self) -> dict:
        start = datetime.now(UTC)
        prepare_output(self.out, self.fingerprint, self.opts)
        _setup_log(self.out / "logs" / "run.log")
        manifest_path = self.out / "manifest.json"
        if self.opts.resume and manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("complete"):
                self.console.print(f"{self.out}: run already complete")
                return json.loads((self.out / "stats.json").read_text())
        cfg = self.config.input
        plan = plan_inputs(cfg.paths, owner=cfg.owner, content_from=cfg.content_from, limit=cfg.limit,
                           task_bytes=self.config.executor.task_bytes)
        manifest = {
            "name": self.config.name, "config": self.config.model_dump(mode="json"),
            "stages": [{"kind": s.kind, "name": s.name, "options": s.options.model_dump(mode="json")}
                       for s in self.specs],
            "config_fingerprint": self.fingerprint, "inputs": plan.files, "tasks": len(plan.tasks),
            "packages": package_versions(), "optout_registry_version": None,
            "started_at": start.isoformat(), "ended_at": None, "complete": False,
        }
        manifest.update(self.stage_info)
        write_json_atomic(manifest_path, manifest)
        log.info("run %s: %d input files, %d units, %d tasks", self.config.name, len(plan.files),
                 len(plan.units), len(plan.tasks))
        jobs = self.build_jobs(plan)
        if self.opts.resume:
            self.invalidate_corrupt(jobs)
        total = plan.total_bytes
        import_plotting_in_background()  # this process mostly waits on workers now
        try:
            for job in jobs:
                self.run_job(job, total)
                if job.feeds:  # the next segment reads what entered this global stage
                    total = stage_parts([self.logging_dir(job)])[job.feeds]["counts"]["bytes_in"]
        except CorruptIntermediate as e:
            raise RunFailure(f"{e}; re-run with --resume to recompute it") from None
        except (UserError, RunFailure):
            raise
        except Exception as e:  # one line for the user; the traceback goes to logs/run.log
            log.error("run failed:\n%s", traceback.format_exc())
            raise RunFailure(f"{type(e).__name__}: {e} (details in {self.out / 'logs' / 'run.log'})") from None
        stats = self.finalize(jobs, manifest)
        return stats

    # -- finishing --------------------------------------------------------------------------------
    def finalize(self, jobs: list[Job], manifest: dict) -> dict:
        ids = sorted((self.work / "input_ids").glob("*.parquet"))
        table = pa.concat_tables([pq.ParquetFile(p).read() for p in ids]) if ids else IDS_SCHEMA.empty_table()
        write_table_atomic(table, self.out / "input_ids.parquet", checksum=False, compression="zstd")
        self.publish_clusters()
        parts = stage_parts([self.logging_dir(j) for j in jobs])
        stages = merge_stages(parts, [s.name for s in self.specs])
        counted = languages(parts)
        stats = {"stages": stages, "totals": totals(stages, counted), "languages": counted}
        write_json_atomic(self.out / "stats.json", stats)
        manifest.update(ended_at=datetime.now(UTC).isoformat(), complete=True,
                        executor={**self.config.executor.model_dump(), "task_retries": self.retries})
        write_card(self.out, manifest, stats)
        write_json_atomic(self.out / "manifest.json", manifest)
        shutil.rmtree(self.work, ignore_errors=True)
        self.console.print(summary_table(stats, title=f"codecurate run: {self.config.name}"))
        self.console.print(f"output: {self.out}")
        return stats


    def publish_clusters(self) -> None:
        """Hard-link what global stages publish (`GlobalStage.published`) to `clusters/<stage>/`."""
        for stage in self.stages:
            if not isinstance(stage, GlobalStage) or stage.published is None:
                continue
            folder, target = self.work / stage.name / stage.published, self.out / CLUSTERS_DIR / stage.name
            shutil.rmtree(target, ignore_errors=True)  # a finalize resumed after a crash
            target.mkdir(parents=True)
            for path in sorted(folder.glob("*.parquet")):
                os.link(path, target / path.name)


def with_columns(schema: pa.Schema, columns: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """`schema` with the columns a stage adds (an input column of null type takes the stage's type)."""
    for name, dtype in columns:
        if name not in schema.names:
            schema = schema.append(pa.field(name, dtype))
        elif schema.field(name).type == pa.null():
            schema = schema.set(schema.get_field_index(name), pa.field(name, dtype))
    return schema


def _setup_log(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False

