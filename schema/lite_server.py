"""Start or reuse one Milvus Lite server per data folder, so the UI, workers and CLI calls share it.

Milvus Lite locks its data folder to a single process. Rather than each vidsearch process embedding its own
engine (the second one would fail on the lock), the first process to need it starts `milvus-lite server` bound
to 127.0.0.1 as a detached process and records its port; every later process connects to that port.
The server outlives the process that started it; `vidsearch milvus stop` ends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class LiteServerError(RuntimeError):
    """The embedded Milvus Lite server could not be started or reached."""


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def _state_path(data_dir: Path) -> Path:
    return data_dir.parent / "milvus-server.json"


def _log_path(data_dir: Path) -> Path:
    return data_dir.parent / "milvus-server.log"


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialise start-up between processes so that two of them never race to start a server."""
    lock_path = data_dir.parent / "milvus-server.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _port_open(port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((LOOPBACK, port)) == 0


def free_port() -> int:
    """A free TCP port on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def read_state(data_dir: Path) -> ServerState | None:
    """The recorded server for this data folder, if it is still running."""
    try:
        raw = json.loads(_state_path(data_dir).read_text())
        state = ServerState(pid=int(raw["pid"]), port=int(raw["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid_alive(state.pid) and _port_open(state.port):
        return state
    return None


def ensure_server(data_dir: Path, port: int = 0, timeout: float = 120.0) -> str:
    """Return the URI of the Milvus Lite server for `data_dir`, starting one if none is running."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        state = read_state(data_dir)
        if state is not None:
            return state.uri
        state = _start(data_dir, port or free_port(), timeout)
        _state_path(data_dir).write_text(json.dumps({"pid": state.pid, "port": state.port}))
        return state.uri


def _start(data_dir: Path, port: int, timeout: float) -> ServerState:
    if _port_open(port):  # otherwise another service answering there would pass for our server
        raise LiteServerError(f"port {port} on {LOOPBACK} is already in use (VIDSEARCH_MILVUS_LITE_PORT); "
                              "choose another or 0 for any free port")
    log_path = _log_path(data_dir)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
             "--host", LOOPBACK, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed by the Ctrl-C aimed at the process that started it
            close_fds=True,
        )
    log.info("started Milvus Lite server pid=%d on %s:%d for %s", proc.pid, LOOPBACK, port, data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = "\n".join(log_tail(log_path)) or "(no log)"
            raise LiteServerError(f"the Milvus Lite server for {data_dir} exited at start (code {proc.returncode}). "
                                  f"Last lines of {log_path}:\n{last}")
        if _port_open(port) and proc.poll() is None:
            return ServerState(pid=proc.pid, port=port)
        time.sleep(0.1)
    proc.kill()
    raise LiteServerError(f"the Milvus Lite server for {data_dir} did not start within {timeout:.0f} s; see {log_path}")


def stop_server(data_dir: Path, timeout: float = 15.0) -> bool:
    """Stop the recorded server gracefully (SIGINT lets it flush and release the lock). True if one was running."""
    data_dir = data_dir.resolve()
    # The lock is held until the old server is gone: a new one started meanwhile would find the folder locked.
    with _locked(data_dir):
        state = read_state(data_dir)
        _state_path(data_dir).unlink(missing_ok=True)
        if state is None:
            return False
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not pid_alive(state.pid):
                    return True
                time.sleep(0.1)
        return True


def log_tail(path: Path, lines: int = 15) -> list[str]:
    """The last non-empty lines of a log file ([] when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
