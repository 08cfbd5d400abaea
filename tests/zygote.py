"""A process that imports vidsearch once and forks ready-to-run `vidsearch` commands on request.

Each forked child is a real, separate `vidsearch` process (its own pid and session, killable with SIGKILL) that
skips the ~5 s of importing torch, transformers and pymilvus. The fault-injection test starts 20+ workers, so this
takes minutes off the suite. Nothing has run torch or opened a connection before the fork, so forking is safe.

Protocol, one JSON object per line: {"spawn": [argv...], "env": {...}, "log": path} -> {"pid": N};
{"poll": N} -> {"code": exit code, or null while it runs}.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymilvus  # noqa: F401
import transformers.models.clip.modeling_clip  # noqa: F401

import ingest.cli  # noqa: F401  (the imports are the point)
import ingest.encoder  # noqa: F401
import ingest.worker  # noqa: F401


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
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
        ingest.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
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
                _child(request["spawn"], request["env"], request["log"])
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

    def ask(self, request: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited with {self.proc.wait()}")
        return json.loads(line)

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> Forked:
        log.touch()
        return Forked(self, self.ask({"spawn": argv, "env": env, "log": str(log)})["pid"])

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
