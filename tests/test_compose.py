"""docker-compose.yml cannot be started here (no Docker engine): parse it and check what makes it work."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from schema.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_milvus_standalone_services_with_healthchecks(compose):
    services = compose["services"]
    assert {"etcd", "minio", "standalone", "app"} <= set(services)
    for name in ("etcd", "minio", "standalone", "app"):
        check = services[name]["healthcheck"]
        assert check["test"] and {"interval", "timeout", "retries"} <= set(check), name
    standalone = services["standalone"]
    assert standalone["command"] == ["milvus", "run", "standalone"]
    assert set(standalone["depends_on"]) == {"etcd", "minio"}
    env = _env(standalone)
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    assert "9091/healthz" in " ".join(standalone["healthcheck"]["test"])
    assert "19530:19530" in standalone["ports"]


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        if "image" in service and name != "app":
            tag = service["image"].rsplit(":", 1)
            assert len(tag) == 2 and tag[1] not in ("latest", ""), service["image"]
    assert re.fullmatch(r"milvusdb/milvus:v2\.\d+\.\d+", compose["services"]["standalone"]["image"])


def test_app_waits_for_a_healthy_milvus_and_points_at_it(compose):
    app = compose["services"]["app"]
    assert app["depends_on"]["standalone"]["condition"] == "service_healthy"
    env = _env(app)
    uri = urlparse(env["VIDSEARCH_MILVUS_URI"])
    assert uri.hostname == "standalone" and uri.port == 19530
    assert env["VIDSEARCH_HOST"] == "0.0.0.0"  # reachable through the published port
    published = [p.split(":") for p in app["ports"]]
    assert [env.get("VIDSEARCH_PORT", "7860")] == [container for _, container in published]


def test_app_environment_names_real_settings(compose):
    fields = {f"VIDSEARCH_{name.upper()}" for name in Settings.model_fields}
    env = _env(compose["services"]["app"])
    unknown = {k for k in env if k.startswith("VIDSEARCH_")} - fields
    assert not unknown, f"not settings: {unknown}"
    # And the values parse as settings (shell defaults like ${X:-y} resolved to their default).
    values = {k[len("VIDSEARCH_"):].lower(): re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    settings = Settings(**values)
    assert settings.milvus_uri == "http://standalone:19530"


def test_dockerfile_installs_the_project_and_serves(compose):
    app = compose["services"]["app"]
    context = ROOT / (app["build"] if isinstance(app["build"], str) else app["build"]["context"])
    dockerfile = (context / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install \.$", dockerfile, re.M)
    for package in ("ingest", "schema", "search_app"):
        assert re.search(rf"^COPY {package} ", dockerfile, re.M), package
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and yaml.safe_load(cmd.group(1))[:2] == ["vidsearch", "serve"]
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)  # not running as root
    assert "EXPOSE 7860" in dockerfile

