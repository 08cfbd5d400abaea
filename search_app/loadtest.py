"""`vidsearch loadtest`: concurrent clients search over HTTP for a bounded time, optionally while videos are ingested.

Two modes. Against a running app (`--url`), only the searches are measured. Self-contained (the default), a real
`vidsearch serve` process with its ingestion worker runs on 127.0.0.1 with a throwaway data folder; generated clips
are uploaded through the API and ingested while the clients search, and the report says how many became ready
during the load. With no checkpoint reachable it serves the bench's randomly initialised ViT-B/32 (speed does not
depend on weight values).

The clients use one asyncio event loop with httpx.AsyncClient rather than a thread per client: 20+ clients then
cost one thread and little CPU, which matters on a 2-core machine where the load generator shares the cores with
the server it measures, and no client waits on another's GIL turn to read its own clock.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import numpy as np

from schema.lite_server import free_port, log_tail
from schema.settings import Settings

Target = Literal["api", "gradio"]
Search = Callable[[httpx.AsyncClient, str, int], Awaitable[None]]

SUBJECTS = ("a dog", "a red car", "two people", "a cat", "a man on a bike", "a child", "a blue square",
            "a green circle", "a crowd", "a horse")
ACTIONS = ("running on a beach", "driving at night", "dancing at a party", "jumping over a fence",
           "cooking in a kitchen", "playing football", "moving to the right", "in the rain", "on a mountain road")
ERROR_SAMPLES = 5
# Data location and identity of the throwaway server: never taken from the caller's environment, so that a self-
# contained run cannot write into a real library, collection or Milvus server.
ISOLATED = ("HOME", "DATABASE_URL", "MILVUS_URI", "MILVUS_TOKEN", "MILVUS_LITE_PORT", "COLLECTION", "AUTH", "HOST",
            "PORT", "MODEL")
# Small claims and one-video writes, unless set: videos become ready one by one, so progress during the load shows
# (with the default claim of 16 jobs, a whole claim turns ready at once, possibly just after the load ended).
INGEST_DEFAULTS = {"VIDSEARCH_CLAIM_SIZE": "1", "VIDSEARCH_WRITE_BATCH": "1", "VIDSEARCH_WORKER_POLL_SECONDS": "0.5"}


class LoadTestError(RuntimeError):
    """The load test could not run (server did not start, URL unreachable, ...): one readable sentence."""


@dataclass(frozen=True)
class LoadResult:
    """Figures of one load run. Latencies cover every request, failed ones included."""

    url: str
    target: Target
    clients: int
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float  # successful requests per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    error_samples: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IngestProgress:
    """What the server's worker did while the clients searched."""

    model: str
    clips: str
    queued: int  # uploaded as the load started
    ready_at_start: int  # the warm-up video
    ingested: int  # videos that became ready during the load
    failed: int
    left: int  # still queued or processing when the load ended
    videos_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    load: LoadResult
    ingest: IngestProgress | None = None
    conditions: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**self.load.as_dict(), "ingest": self.ingest.as_dict() if self.ingest else None,
                "conditions": self.conditions}


# ------------------------------------------------------------------------------------------------------ clients


def query_text(n: int) -> str:
    """The n-th query: varied subjects and actions, so no two neighbouring requests are the same text."""
    return f"{SUBJECTS[n % len(SUBJECTS)]} {ACTIONS[(n // len(SUBJECTS)) % len(ACTIONS)]}"


def summarize(url: str, target: Target, clients: int, duration_s: float, latencies_ms: list[float],
              errors: list[str]) -> LoadResult:
    """Percentiles (numpy, linear interpolation) and throughput of one run."""
    requests = len(latencies_ms)
    p50 = p95 = p99 = top = None
    if latencies_ms:
        p50, p95, p99 = (round(float(x), 2) for x in np.percentile(latencies_ms, [50, 95, 99]))
        top = round(max(latencies_ms), 2)
    ok = requests - len(errors)
    samples = tuple(f"{msg} (x{n})" for msg, n in Counter(errors).most_common(ERROR_SAMPLES))
    return LoadResult(url=url, target=target, clients=clients, duration_s=round(duration_s, 3), requests=requests,
                      errors=len(errors), throughput_rps=round(ok / duration_s, 2) if duration_s > 0 else 0.0,
                      p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=top, error_samples=samples)


# The Search tab's Filters panel left empty (durations, dates, tags): its event takes them after the text and k.
NO_FILTERS = [None, None, "", "", []]


async def search_api(client: httpx.AsyncClient, text: str, k: int) -> None:
    """POST /api/search; raises on anything but a 2xx JSON answer with a result list."""
    response = await client.post("/api/search", json={"text": text, "k": k})
    if not response.is_success:
        raise LoadTestError(f"HTTP {response.status_code}: {response.text[:200]}")
    if not isinstance(response.json().get("results"), list):
        raise LoadTestError(f"answer without results: {response.text[:200]}")


async def search_gradio(client: httpx.AsyncClient, text: str, k: int) -> None:
    """The Search tab's event through Gradio's queue (POST /gradio_api/call/do_search, then its event stream)."""
    response = await client.post("/gradio_api/call/do_search", json={"data": [text, k, *NO_FILTERS]})
    if not response.is_success:
        raise LoadTestError(f"HTTP {response.status_code}: {response.text[:200]}")
    event_id = response.json()["event_id"]
    async with client.stream("GET", f"/gradio_api/call/do_search/{event_id}") as stream:
        if not stream.is_success:
            raise LoadTestError(f"HTTP {stream.status_code} from the event stream")
        event = None
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise LoadTestError(f"Gradio error: {line[5:].strip()[:200]}")
                return
    raise LoadTestError("the event stream ended without a result")


SEARCHES: dict[str, Search] = {"api": search_api, "gradio": search_gradio}


async def _client_loop(client: httpx.AsyncClient, search: Search, first: int, step: int, k: int, deadline: float,
                       latencies: list[float], errors: list[str]) -> None:
    n = first
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            await search(client, query_text(n), k)
        except Exception as exc:  # noqa: BLE001 (every failure counts as an error, whatever raised it)
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
        latencies.append((time.perf_counter() - start) * 1000)
        n += step


async def run_clients_async(url: str, clients: int = 20, seconds: float = 20.0, *, auth: tuple[str, str] | None = None,
                            target: Target = "api", k: int = 10, timeout: float = 120.0) -> LoadResult:
    """`clients` concurrent clients, each searching back to back until `seconds` have passed (requests in flight
    then are waited for and counted). One keep-alive connection per client."""
    if clients < 1 or seconds <= 0:
        raise ValueError("clients must be >= 1 and seconds > 0")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors: list[str] = []
    # trust_env=False: a proxy configured for the outside world must not sit between the clients and loopback.
    async with httpx.AsyncClient(base_url=url.rstrip("/"), auth=auth, timeout=timeout, limits=limits,
                                 trust_env=False) as client:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_client_loop(client, SEARCHES[target], i, clients, k, deadline, latencies, errors)
                               for i in range(clients)))
        elapsed = time.perf_counter() - start
    return summarize(url, target, clients, elapsed, latencies, errors)


def run_clients(url: str, clients: int = 20, seconds: float = 20.0, *, auth: tuple[str, str] | None = None,
                target: Target = "api", k: int = 10, timeout: float = 120.0) -> LoadResult:
    """Blocking wrapper of run_clients_async (for callers without an event loop)."""
    return asyncio.run(run_clients_async(url, clients, seconds, auth=auth, target=target, k=k, timeout=timeout))


def parse_auth(spec: str | None) -> tuple[str, str] | None:
    """`user:password` -> (user, password); None stays None."""
    if spec is None:
        return None
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise LoadTestError("--auth takes user:password")
    return user, password


def check_reachable(url: str, auth: tuple[str, str] | None = None) -> None:
    """One GET /api/videos?status=ready: a clear error before the load if the URL is not a vidsearch app."""
    try:
        ready_count(url, auth)
    except httpx.HTTPError as exc:
        raise LoadTestError(f"{url} is not reachable: {exc}") from None


def videos_page(url: str, auth: tuple[str, str] | None = None, status: str = "ready", limit: int = 1) -> dict:
    """The first page of GET /api/videos?status=...: {"videos": [...], "total": N, "next": ...}."""
    with httpx.Client(base_url=url.rstrip("/"), auth=auth, timeout=30, trust_env=False) as client:
        response = client.get("/api/videos", params={"status": status, "limit": limit})
        if response.status_code == 401:
            raise LoadTestError(f"{url} needs a login: pass --auth user:password")
        if not response.is_success:
            raise LoadTestError(f"{url}/api/videos answered HTTP {response.status_code}; is it a vidsearch app?")
        return response.json()


def ready_count(url: str, auth: tuple[str, str] | None = None, status: str = "ready") -> int:
    return int(videos_page(url, auth, status)["total"])


# ------------------------------------------------------------------------------------------ self-contained run


def resolve_model(settings: Settings, workdir: Path) -> tuple[str, str]:
    """(what the server loads, how to describe it): VIDSEARCH_MODEL when it loads, else the bench's random ViT-B/32.

    Loaded here once through the bench's own helper, so the choice is exactly the bench's; then freed."""
    from search_app.bench import bench_model

    encoder, name = bench_model(settings, None, workdir)
    model = encoder.model_id
    del encoder
    gc.collect()
    return model, name


def server_env(home: Path, model: str) -> dict[str, str]:
    """The caller's environment (tuning knobs included) with the data location and model of the throwaway run."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("VIDSEARCH_") and k.removeprefix("VIDSEARCH_") in ISOLATED)}
    for key, value in INGEST_DEFAULTS.items():
        env.setdefault(key, value)
    env.update({"VIDSEARCH_HOME": str(home), "VIDSEARCH_MODEL": model})
    root = str(Path(__file__).resolve().parent.parent)  # `python -m search_app.cli` from the throwaway folder too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _tail(path: Path, lines: int = 3) -> str:
    """The server log's last lines, on one line (the CLI shows errors as one line)."""
    return " | ".join(line.strip() for line in log_tail(path, lines))[-600:] or "(empty log)"


def wait_started(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LoadTestError(f"vidsearch serve exited with status {proc.returncode}: {_tail(log_path)}")
        try:
            ready_count(url)
            return
        except (httpx.HTTPError, LoadTestError):
            time.sleep(0.3)
    raise LoadTestError(f"vidsearch serve did not answer within {timeout:.0f} s: {_tail(log_path)}")


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ctrl-C (the server requeues its work and stops its worker), then SIGKILL to its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def upload_clips(url: str, clips: list[Path]) -> int:
    with httpx.Client(base_url=url, timeout=120, trust_env=False) as client:
        for clip in clips:
            with open(clip, "rb") as handle:
                response = client.post("/api/videos", files={"file": (clip.name, handle, "video/mp4")})
            if response.status_code != 201:
                raise LoadTestError(f"uploading {clip.name} failed: HTTP {response.status_code} {response.text[:200]}")
    return len(clips)


def wait_ready(url: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (ready := ready_count(url)) < at_least:
        if failed := videos_page(url, status="failed")["videos"]:
            raise LoadTestError(f"the server's worker failed to ingest {failed[0]['title']}: {failed[0]['error']}")
        if time.monotonic() > deadline:
            raise LoadTestError(f"no video was ingested within {timeout:.0f} s")
        time.sleep(0.2)
    return ready


def wait_experts_settled(url: str, timeout: float) -> None:
    """Wait until no expert of the ready videos is queued or running: the expert engines (speech, OCR, CLAP) are loaded
    once per process on their first video and share the worker with appearance, so a measured window that opened
    before that would measure their loading, not the steady state."""
    deadline = time.monotonic() + timeout
    while any(run["state"] in ("queued", "running")
              for video in videos_page(url, limit=100)["videos"] for run in video.get("experts", {}).values()):
        if time.monotonic() > deadline:
            raise LoadTestError(f"the experts of the first video did not finish within {timeout:.0f} s")
        time.sleep(0.2)


@dataclass(frozen=True)
class ClipSpec:
    width: int = 320
    height: int = 180
    seconds: float = 3.0
    fps: int = 12

    def __str__(self) -> str:
        return f"{self.width}x{self.height}, {self.seconds:g} s at {self.fps} fps, H.264"


def run_self_contained(settings: Settings, clients: int = 20, seconds: float = 20.0, *, videos: int = 24,
                       target: Target = "api", clip: ClipSpec = ClipSpec(),  # noqa: B008 (frozen)
                       progress: Callable[[str], None] = lambda _msg: None) -> Report:
    """Serve a throwaway library with `vidsearch serve` (worker included) on 127.0.0.1; upload one generated clip and
    wait until it is ready and its experts are done (decoder processes started, models warm);
    then upload `videos` more and start the clients
    at once, so the worker ingests them under the load."""
    from schema.lite_server import stop_server
    from search_app.bench import write_clip

    if videos < 1:
        raise ValueError("videos must be >= 1")
    with tempfile.TemporaryDirectory(prefix="vidsearch-loadtest-") as tmp:
        work = Path(tmp)
        progress("resolving the model")
        model, model_name = resolve_model(settings, work)
        progress(f"writing {videos + 1} clips ({clip})")
        (work / "clips").mkdir()
        warmup, *clips = [write_clip(work / "clips" / f"load_{i:03d}.mp4", clip.width, clip.height, clip.seconds,
                                     fps=clip.fps, seed=i) for i in range(videos + 1)]
        home = work / "home"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = work / "serve.log"
        env = server_env(home, model)
        progress(f"starting vidsearch serve on {url}")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "search_app.cli", "serve", "--port", str(port)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
        try:
            wait_started(url, proc, log_path)
            upload_clips(url, [warmup])
            progress("waiting for the worker's first video (decoder and model warm)")
            wait_ready(url, 1, timeout=300)
            wait_experts_settled(url, timeout=300)
            for n in range(3):  # first queries: tokenizer, in-memory index
                asyncio.run(_warm(url, n))
            ready_before = ready_count(url)
            upload_clips(url, clips)
            progress(f"{clients} clients for {seconds:g} s while the worker ingests {videos} videos")
            load = run_clients(url, clients, seconds, target=target)
            ready_after, failed = ready_count(url), ready_count(url, status="failed")
            if proc.poll() is not None:
                raise LoadTestError(f"vidsearch serve died during the load: {_tail(log_path)}")
        finally:
            stop_process(proc)
            stop_server(home / "milvus")
        ingest = IngestProgress(model=model_name, clips=str(clip), queued=videos, ready_at_start=ready_before,
                                ingested=ready_after - ready_before, failed=failed,
                                left=videos + 1 - ready_after - failed,
                                videos_per_s=round((ready_after - ready_before) / load.duration_s, 3))
    conditions = {"cpu_count": os.cpu_count(), "mode": "self-contained: vidsearch serve + worker, loopback",
                  **{k: env[k] for k in sorted(env) if k.startswith("VIDSEARCH_") and k not in
                     ("VIDSEARCH_HOME", "VIDSEARCH_MODEL")}}
    return Report(load, ingest, conditions)


async def _warm(url: str, n: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120, trust_env=False) as client:
        await search_api(client, query_text(n), 10)


def run_against(url: str, clients: int = 20, seconds: float = 20.0, *, auth: tuple[str, str] | None = None,
                target: Target = "api") -> Report:
    """Load a running app (its own worker may or may not be ingesting; nothing is uploaded)."""
    check_reachable(url, auth)
    load = run_clients(url, clients, seconds, auth=auth, target=target)
    return Report(load, None, {"cpu_count": os.cpu_count(), "mode": "against a running app"})


def format_report(report: Report) -> list[str]:
    r = report.load

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    lines = [
        f"target    {r.target} at {r.url}, {r.clients} clients, {r.duration_s:.1f} s",
        f"requests  {r.requests}  errors {r.errors}  throughput {r.throughput_rps:.1f} req/s",
        f"latency   p50 {ms(r.p50_ms)}  p95 {ms(r.p95_ms)}  p99 {ms(r.p99_ms)}  max {ms(r.max_ms)}",
    ]
    lines += [f"  error: {sample}" for sample in r.error_samples]
    if report.ingest is not None:
        i = report.ingest
        lines.append(f"ingest    {i.ingested} of {i.queued} videos ready during the load ({i.videos_per_s:.2f}/s), "
                     f"{i.left} left, {i.failed} failed; clips of {i.clips}"
                     + ("" if i.left else "; the queue emptied before the end: use more --videos"))
        lines.append(f"model     {i.model}")
    return lines


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)
