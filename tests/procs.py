"""Helpers to run a real `vidsearch serve` process in tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from schema.lite_server import free_port  # noqa: F401  (tests import it from here)
from tests.conftest import cli_env


def vidsearch_cmd() -> list[str]:
    script = Path(sys.executable).parent / "vidsearch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "search_app.cli"]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


@contextlib.contextmanager
def running_server(home: Path, model: Path, log_path: Path, *extra: str, env_extra: dict[str, str] | None = None
                   ) -> Iterator[str]:
    """Start `vidsearch serve` on a free port; yield its base URL; stop it and its Milvus Lite server."""
    port = free_port()
    env = cli_env(home, model, **(env_extra or {}))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*vidsearch_cmd(), "serve", "--port", str(port), *extra], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(url + "/", proc)
        except (RuntimeError, TimeoutError):
            raise RuntimeError("vidsearch serve did not start:\n" + log_path.read_text()[-4000:]) from None
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run([*vidsearch_cmd(), "milvus", "stop"], env=env, capture_output=True, timeout=120)


@contextlib.contextmanager
def serve_in_thread(app, join_timeout: float = 60.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a background thread of this process, on a free loopback port; yield its
    base URL; stop it."""
    import threading

    import uvicorn

    from search_app.web import KEEP_ALIVE_S

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           timeout_keep_alive=KEEP_ALIVE_S))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=join_timeout)
