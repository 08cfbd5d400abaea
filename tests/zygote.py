"""A process that imports vidsearch once and forks ready-to-run `vidsearch` commands on request.

Each forked child is a real, separate `vidsearch` process (its own pid and session, killable with SIGKILL) that
skips the ~5 s of importing torch, transformers and pymilvus. The fault-injection test starts 20+ workers, so this
takes minutes off the suite. Nothing has run torch or opened a connection before the fork, so forking is safe.

Protocol, one JSON object per line: {"spawn": [argv...], "env": {...}, "stdout": path, "stderr": path}
-> {"pid": N}; {"poll": N} -> {"code": exit code, or null while it runs}.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pymilvus  # noqa: F401
import transformers.models.clip.modeling_clip  # noqa: F401

import ingest.encoder  # noqa: F401
import ingest.worker  # noqa: F401
import search_app.cli  # noqa: F401  (the imports are the point)


def _child(argv: list[str], env: dict[str, str], stdout: str, stderr: str) -> None:
    os.setsid()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 1)
    os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if stderr != stdout else 1, 2)
    sys.stdin = open(0)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1)  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["vidsearch", *argv]
    code = 1
    try:
        search_app.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  (os._exit below skips Python's own report: print it, as `vidsearch` would)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _status(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if "spawn" in request:
            pid = os.fork()
            if pid == 0:
                _child(request["spawn"], request["env"], request["stdout"], request["stderr"])
            answer: dict = {"pid": pid}
        else:
            done, status = os.waitpid(request["poll"], os.WNOHANG)
            answer = {"code": _status(status) if done else None}
        print(json.dumps(answer), flush=True)


class Zygote:
    """The test's handle on a zygote process."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=cwd)
        self._runs = itertools.count()

    def ask(self, request: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited with {self.proc.wait()}")
        return json.loads(line)

    def spawn(self, argv: list[str], env: dict[str, str], stdout: Path, stderr: Path | None = None) -> Forked:
        """Start `vidsearch *argv`; its output is appended to `stdout` (and `stderr`, else the same file)."""
        stdout.touch()
        request = {"spawn": argv, "env": env, "stdout": str(stdout), "stderr": str(stderr or stdout)}
        return Forked(self, self.ask(request)["pid"])

    def run(self, argv: list[str], env: dict[str, str], workdir: Path, timeout: float
            ) -> subprocess.CompletedProcess:
        """Like subprocess.run(capture_output=True, text=True) for one `vidsearch` command."""
        workdir.mkdir(parents=True, exist_ok=True)
        n = next(self._runs)
        out, err = workdir / f"{n}.out", workdir / f"{n}.err"
        child = self.spawn(argv, env, out, err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
        return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Forked:
    """The part of subprocess.Popen's interface the tests use, for a zygote's child."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.ask({"poll": self.pid})["code"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"vidsearch (pid {self.pid})", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


if __name__ == "__main__":
    serve()
