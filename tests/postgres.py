"""A real PostgreSQL server for the session (Debian's `postgresql` package), on a free loopback port.

Missing binaries are an error, not a skip: CI installs them (.ci/run), and the catalog's PostgreSQL path must not
silently go untested.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

USER = "test"


def _bindir() -> Path:
    """The server binaries: Debian keeps them in /usr/lib/postgresql/<major>/bin, off PATH."""
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])):
        return Path(initdb).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: install them with "
                       "`apt-get install postgresql` (the catalog migration tests run against a real server)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    root: Path  # data folder, socket and log; owned by the server's user
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"db{next(self._names)}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
        finally:
            engine.dispose()
        return self.url(name)


def _as_server_user(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; the packaged `postgres` user runs the server instead.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_server() -> PostgresServer:
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="vidsearch-pg-"))  # not under pytest's tmp: that is 0700, root's only
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
                                    "--no-sync", "-E", "UTF8", "--no-locale"]), **run)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    try:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                                        "-w", "-o", options, "start"]), **run)
    except subprocess.CalledProcessError as exc:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log[-2000:]}") from None
    return PostgresServer(bindir, root, port)


def stop_server(server: PostgresServer) -> None:
    subprocess.run(_as_server_user([str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-m", "fast",
                                    "-w", "stop"]), capture_output=True, timeout=60)
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; tests take their own database with `postgres_url`."""
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return postgres_server.create_database()
