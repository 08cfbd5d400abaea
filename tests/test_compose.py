"""docker-compose.yml cannot be started here (no Docker engine): parse it and check what makes it work.

Everything is checked by parsing; `docker compose config` (the plugin, or Debian's docker-compose, which .ci/run
installs) then validates the file against the compose schema.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from schema.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MILVUS_SERVICES = ("etcd", "minio", "standalone")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile(compose) -> str:
    build = compose["services"]["app"]["build"]
    context = ROOT / (build if isinstance(build, str) else build["context"])
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return (context / name).read_text()


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _defaults(value: str) -> str:
    """What compose substitutes when the variable is unset: ${X:-y} -> y; a required ${X:?message} -> <X>."""
    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?[^}]*\}", r"<\1>", value)
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_milvus_standalone_services_with_healthchecks(compose):
    services = compose["services"]
    assert {"etcd", "minio", "standalone", "app"} <= set(services)
    for name in (*MILVUS_SERVICES, "app"):
        check = services[name]["healthcheck"]
        assert check["test"] and {"interval", "timeout", "retries"} <= set(check), name
    standalone = services["standalone"]
    assert standalone["command"] == ["milvus", "run", "standalone"]
    assert "seccomp:unconfined" in standalone["security_opt"]
    assert set(standalone["depends_on"]) == {"etcd", "minio"}
    env = _env(standalone)
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    assert "start_period" in standalone["healthcheck"]
    assert "http://localhost:9091/healthz" in standalone["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/milvus") for v in standalone["volumes"])


def test_etcd_and_minio_as_upstream_configures_them(compose):
    etcd, minio = compose["services"]["etcd"], compose["services"]["minio"]
    assert set(_env(etcd)) == {"ETCD_AUTO_COMPACTION_MODE", "ETCD_AUTO_COMPACTION_RETENTION",
                               "ETCD_QUOTA_BACKEND_BYTES", "ETCD_SNAPSHOT_COUNT"}
    assert "-listen-client-urls http://0.0.0.0:2379" in etcd["command"]
    assert etcd["healthcheck"]["test"] == ["CMD", "etcdctl", "endpoint", "health"]
    assert set(_env(minio)) == {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert minio["command"] == 'minio server /minio_data --console-address ":9001"'
    assert "http://localhost:9000/minio/health/live" in minio["healthcheck"]["test"]
    for name in MILVUS_SERVICES:  # Milvus's data stays beside the file unless DOCKER_VOLUME_DIRECTORY says otherwise
        assert all(v.startswith("${DOCKER_VOLUME_DIRECTORY:-.}/volumes/") for v in compose["services"][name]["volumes"])
    assert compose["networks"]["default"]["name"] == "milvus"


def test_images_are_pinned(compose):
    for name in MILVUS_SERVICES:
        image = compose["services"][name]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag not in ("", "latest"), image
    assert re.fullmatch(r"milvusdb/milvus:v2\.[56]\.\d+", compose["services"]["standalone"]["image"])
    assert compose["services"]["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    assert compose["services"]["minio"]["image"].startswith("minio/minio:RELEASE.")


def test_app_waits_for_a_healthy_milvus_and_points_at_it(compose):
    services = compose["services"]
    app = services["app"]
    assert app["depends_on"]["standalone"]["condition"] == "service_healthy"
    env = _env(app)
    uri = urlparse(env["VIDSEARCH_MILVUS_URI"])
    assert uri.scheme in ("http", "tcp", "grpc") and uri.hostname in services and uri.hostname == "standalone"
    assert uri.port == 19530
    assert env["VIDSEARCH_HOST"] == "0.0.0.0"  # reachable through the published port
    port = env.get("VIDSEARCH_PORT", str(Settings.model_fields["port"].default))
    assert [p.rsplit(":", 1)[1] for p in app["ports"]] == [port] == ["7860"]
    assert f"localhost:{port}/" in " ".join(app["healthcheck"]["test"])


def test_app_environment_names_real_settings(compose):
    fields = {f"VIDSEARCH_{name.upper()}" for name in Settings.model_fields}
    env = _env(compose["services"]["app"])
    unknown = {k for k in env if k.startswith("VIDSEARCH_")} - fields
    assert not unknown, f"not settings: {unknown}"
    assert env["VIDSEARCH_MODEL"] == "${VIDSEARCH_MODEL:-Diangle/clip4clip-webvid}"
    # The values, with shell defaults resolved, are valid settings.
    values = {k[len("VIDSEARCH_"):].lower(): _defaults(v) for k, v in env.items() if k.startswith("VIDSEARCH_")}
    settings = Settings(**values)
    assert settings.milvus_uri == "http://standalone:19530"
    assert settings.storage == "s3://vidsearch/videos" and settings.s3_endpoint_url == "http://minio:9000"
    assert settings.model == "Diangle/clip4clip-webvid" and str(settings.home) == "/data"


def test_app_volumes_hold_the_data_folder_and_the_model_cache(compose, dockerfile):
    app = compose["services"]["app"]
    targets = {v.split(":")[1] for v in app["volumes"]}
    assert _env(app)["VIDSEARCH_HOME"] in targets
    hf_home = re.search(r"^ENV .*\bHF_HOME=(\S+)", dockerfile, re.M)
    assert hf_home and hf_home.group(1) in targets
    named = {v.split(":")[0] for v in app["volumes"] if not v.startswith((".", "/", "$"))}
    assert named <= set(compose.get("volumes") or {})


def test_dockerfile_installs_the_project_and_serves(dockerfile):
    steps = _instructions(dockerfile)
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [args for word, args in steps if word == "RUN"]
    project = [i for i, args in enumerate(runs)
               if re.fullmatch(r'pip install (--no-cache-dir )?"?\.(\[[a-z0-9,]+\])?"?', args)]
    assert any("postgres" in runs[i] and "s3" in runs[i] for i in project), "the compose file's catalog needs it"
    torch = [i for i, args in enumerate(runs) if re.fullmatch(r'pip install (--no-cache-dir )?"?\$TORCH_SPEC"?', args)]
    assert project and torch and torch[0] < project[0], "torch (TORCH_SPEC) is installed before the project"
    assert ("ARG", 'TORCH_SPEC="torch"') in steps
    copied = " ".join(args for word, args in steps if word == "COPY").split()
    for needed in ("pyproject.toml", "README.md", "ingest", "schema", "search_app"):
        assert needed in copied, needed
    cmd = [yaml.safe_load(args) for word, args in steps if word == "CMD"]
    assert cmd and cmd[-1][:2] == ["vidsearch", "serve"] and "0.0.0.0" in cmd[-1]
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "7860") in steps
    # Project rule: no package index address or host name in the image recipe.
    assert not re.search(r"https?://|--(extra-)?index-url\s+\S*\.", dockerfile)


def test_the_catalog_is_postgresql_and_workers_share_the_app_s_settings_and_stored_videos(compose):
    services = compose["services"]
    app, postgres = services["app"], services["postgres"]
    repo, _, tag = postgres["image"].rpartition(":")
    assert repo == "postgres" and re.fullmatch(r"\d+\.\d+", tag)
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = _env(app)
    url = urlparse(_defaults(env["VIDSEARCH_DATABASE_URL"]))
    pg = {k: _defaults(v) for k, v in _env(postgres).items()}
    assert (url.scheme, url.hostname, url.port, url.path.lstrip("/")) == ("postgresql+psycopg", "postgres", 5432,
                                                                          pg["POSTGRES_DB"])
    assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    # The videos: MinIO's bucket, made by the one-shot `buckets` service before the app starts; the S3 keys are
    # MinIO's own user.
    assert env["VIDSEARCH_STORAGE"].startswith("s3://vidsearch/")
    assert urlparse(env["VIDSEARCH_S3_ENDPOINT_URL"]).hostname == "minio"
    minio = _env(services["minio"])
    assert url.password == "<VIDSEARCH_DB_PASSWORD>"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio["MINIO_ROOT_USER"],
                                                                        minio["MINIO_ROOT_PASSWORD"])
    assert "store/vidsearch" in " ".join(services["buckets"]["entrypoint"])
    assert app["depends_on"]["buckets"]["condition"] == "service_completed_successfully"
    # Workers: the app's image and settings, the `worker` command, a health check, one GPU each (or none).
    for name, profile in (("worker", "gpu"), ("worker-cpu", "cpu")):
        worker = services[name]
        assert worker["profiles"] == [profile]
        assert worker["image"] == app["image"] and worker["command"] == ["vidsearch", "worker"]
        assert _env(worker) == env and "container_name" not in worker  # replicas (--scale) need names of their own
        assert worker["depends_on"]["app"]["condition"] == "service_healthy"  # one migration, one model download
        assert worker["healthcheck"]["test"][:2] == ["CMD", "vidsearch"]
    gpus = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]


def test_only_the_app_is_published_and_every_service_is_checked(compose):
    services = compose["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"app": ["7860:7860"]}, "Milvus, PostgreSQL, MinIO, etcd stay on the compose network"
    for name, service in services.items():
        if name != "buckets":  # a one-shot job: its exit status is its health
            assert service["healthcheck"]["test"], name


def test_no_password_has_a_default(compose):
    """Every secret is a required variable (${X:?message}): `up` refuses to start without it, rather than run a
    database or an object store with a password written in this file."""
    text = (ROOT / "docker-compose.yml").read_text()
    secrets = re.findall(r"^\s*(\w*(?:PASSWORD|SECRET)\w*):\s*(.+)$", text, re.M)
    assert len(secrets) >= 4
    for name, value in secrets:
        assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value.strip()), (name, value)
    assert "minioadmin" not in text
    example = (ROOT / ".env.example").read_text()
    for name in ("VIDSEARCH_DB_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert re.search(rf"^{name}=$", example, re.M), name


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerfile):
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p.rstrip("/") for p in patterns if p and not p.startswith("#")]
    for must in (".git", "venv", ".venv", "vidsearch-data", "test-artifacts", ".pytest_cache"):
        assert must in patterns, must
    copied = [src for word, args in _instructions(dockerfile) if word == "COPY" for src in args.split()[:-1]]
    for src in copied:
        assert not any(fnmatch.fnmatch(src, p) for p in patterns if not p.startswith("!")), src
        assert (ROOT / src).exists(), src


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _config(*args: str, **env: str) -> subprocess.CompletedProcess:
    command = _compose_command()
    assert command, "install the docker compose plugin or docker-compose (apt-get install docker-compose)"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("VIDSEARCH_", "MINIO_", "DOCKER_VOLUME_DIRECTORY"))}
    return subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), *args, "config", "-q"],
                          cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("profile", [None, "gpu", "cpu"])
def test_docker_compose_config_accepts_the_file(profile):
    result = _config(*(["--profile", profile] if profile else []),
                     VIDSEARCH_DB_PASSWORD="db-secret", MINIO_ROOT_PASSWORD="minio-secret")
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_run_without_the_passwords():
    result = _config(VIDSEARCH_DB_PASSWORD="db-secret")
    assert result.returncode != 0 and "set MINIO_ROOT_PASSWORD in .env" in result.stderr
