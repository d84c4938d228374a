"""Run an untrusted program (a model's completion plus a benchmark's tests) in its own subprocess.

Two isolation levels, chosen once per machine (`auto`):
- `namespace` (Linux with unprivileged user namespaces, e.g. `unshare -rnm` works): a new user, network
  and mount namespace (no network interface but a down loopback); every writable mount outside /proc and
  /sys remounted read-only; a fresh tmpfs on /tmp as the working directory; the project directory hidden
  under an empty tmpfs; then all capabilities dropped (setpriv), so the program cannot undo the mounts.
- `guard` (anywhere else): a temporary working directory and Python's socket functions replaced by ones
  that raise, installed before the program runs.
Both: the base interpreter in isolated mode without site-packages (`-I -S`: no PYTHON* variables, no
user or project paths on sys.path), a scrubbed environment, RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE
and no core files, set by the child itself before the program is read from stdin, its own session (the
whole process group is killed at the timeout), stdout discarded and only the tail of stderr kept.
"""

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROJECT = Path(__file__).resolve().parents[2]
STDERR_TAIL = 4096

# Runs in the child: limits first, then (guard) the socket guard, then the program from stdin.
BOOT = """\
import resource, sys
mem, cpu, fsize, guard = {limits}
for what, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                    (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(what, (value, value))
if guard:
    import socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    for name in ("socket", "create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
        setattr(socket, name, _no_network)
program = compile(sys.stdin.read(), "<program>", "exec")
sys.stdin = open("/dev/null")
del resource, mem, cpu, fsize, guard, what, value
exec(program, {{"__name__": "__main__", "__builtins__": __builtins__}})
"""

# Runs inside the new namespaces as the mapped root: make the world read-only, give a private /tmp,
# hide the project, drop every capability and start Python.
NAMESPACE_SETUP = """\
for m in $(awk '$4 ~ "^rw" && $2 !~ "^/(proc|sys)" {print $2}' /proc/self/mounts); do
  mount -o remount,bind,ro "$m" 2>/dev/null
done
mount -t tmpfs -o size=64m,mode=700 tmpfs /tmp || exit 125
mount -t tmpfs -o size=4k,ro tmpfs "$1" || exit 125
cd /tmp || exit 125
shift
exec setpriv --bounding-set -all --inh-caps -all -- "$@"
"""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str  # "passed", "timed out", or "failed: <last stderr line>"


def interpreter() -> str:
    """The base interpreter (a venv's python is a link into the project, which the namespace hides)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.cache
def namespaces_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return False
    probe = subprocess.run(["unshare", "-rnm", "sh", "-c", NAMESPACE_SETUP, "sh", str(PROJECT), "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


class Sandbox:
    def __init__(self, mode: Literal["auto", "namespace", "guard"] = "auto", timeout: float = 10.0,
                 memory_mb: int = 2048, file_mb: int = 64):
        if mode == "auto":
            mode = "namespace" if namespaces_work() else "guard"
        self.mode, self.timeout = mode, timeout
        cpu = int(timeout) + 1
        limits = (memory_mb << 20, cpu, file_mb << 20, mode == "guard")
        python = [interpreter(), "-I", "-S", "-c", BOOT.format(limits=repr(limits))]
        self.command = ["unshare", "-rnm", "sh", "-c", NAMESPACE_SETUP, "sh", str(PROJECT), *python] \
            if mode == "namespace" else python
        self.env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}

    def run(self, program: str) -> Outcome:
        """Passed: the program ran to its last line (which writes a fresh nonce to stderr) and exited with 0;
        a completion calling exit(0) or os._exit(0) before the tests ran has not passed."""
        nonce = secrets.token_hex(16)
        program = f"{program}\n__import__('sys').stderr.write('\\n{nonce}\\n')\n"
        with tempfile.TemporaryDirectory(prefix="codecurate-eval-") as workdir, tempfile.TemporaryFile() as stderr:
            env = {**self.env, "HOME": workdir, "TMPDIR": workdir}
            process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                                       cwd=workdir, env=env, start_new_session=True)
            try:
                process.communicate(program.encode(), timeout=self.timeout)
            except subprocess.TimeoutExpired:
                return Outcome(False, "timed out")
            finally:
                _kill_group(process)
            stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - STDERR_TAIL))
            lines = [line.strip() for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
        if process.returncode == 0 and nonce in lines:
            return Outcome(True, "passed")
        if process.returncode == 0:
            return Outcome(False, "failed: exited before the end of the tests")
        return Outcome(False, f"failed: {lines[-1][:200] if lines else _signal_name(process.returncode)}")


def _kill_group(process: subprocess.Popen) -> None:
    """The program's own children go with it (they share its session's process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _signal_name(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
