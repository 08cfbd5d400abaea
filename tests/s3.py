"""A real S3-compatible server on 127.0.0.1 for the tests: moto's standalone server (ThreadedMotoServer, werkzeug in
a thread of the test process) speaks the S3 HTTP API, so s3fs and boto3 talk to it as they would to AWS or MinIO.
Nothing is mocked in-process: every request goes over a loopback socket."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "vidsearch-test", "AWS_SECRET_ACCESS_KEY": "vidsearch-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server for the session: its endpoint URL."""
    # Missing packages are an error, not a skip: the test extra installs them (.ci/run).
    import s3fs  # noqa: F401
    from moto import server as server_module

    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class Bucket:
    endpoint: str
    name: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                                  if k != "AWS_DEFAULT_REGION"},
                            region_name=CREDENTIALS["AWS_DEFAULT_REGION"])

    def keys(self) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.name)
        return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> Bucket:
    """A fresh bucket on the session's server, with the AWS environment s3fs reads pointing at test credentials
    (a developer's own AWS configuration never leaks in)."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = Bucket(s3_endpoint, f"vidsearch-{uuid.uuid4().hex[:12]}")
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket
