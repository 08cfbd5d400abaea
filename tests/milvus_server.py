"""A real Milvus server for the tests: PyPI's `milvus` package, an embedded Milvus standalone (2.3.5 on Linux).

It starts in ~10 s on a fresh data folder, every port chosen free from 40000 up. Its stop is not clean (the next
start on the same folder can fail), so each session gets a folder of its own, thrown away after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass
class MilvusServerProcess:
    uri: str
    version: str
    base_dir: str


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusServerProcess]:
    from milvus import MilvusServer  # the test extra's `milvus` package
    from pymilvus import MilvusClient

    base = tempfile.mkdtemp(prefix="vidsearch-milvus-server-")
    server = MilvusServer()
    server.set_base_dir(base)
    cwd = os.getcwd()
    try:
        server.start()  # waits for /healthz
    finally:
        os.chdir(cwd)  # start() changes the working directory to its base folder
    uri = f"http://127.0.0.1:{server.config.get('proxy_port')}"
    client = MilvusClient(uri=uri)
    version = str(client.get_server_version())
    client.close()
    try:
        yield MilvusServerProcess(uri=uri, version=version, base_dir=base)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
