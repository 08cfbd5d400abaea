"""`vidsearch ...` commands. Errors become one readable line here, at the edge; progress bars live here too."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from schema.settings import Settings
from schema.units import clock

if TYPE_CHECKING:
    from ingest.runtime import Runtime

app = typer.Typer(
    help="Self-hosted text-to-video search.\n\nData lives in ./vidsearch-data (set VIDSEARCH_HOME to move it).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
milvus_app = typer.Typer(help="Manage the embedded Milvus Lite server.", no_args_is_help=True)
app.add_typer(milvus_app, name="milvus")

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
                  ".3gp", ".ogv", ".mts", ".m2ts"}


VIDSEARCH_DB_HINT = "check VIDSEARCH_DATABASE_URL and VIDSEARCH_HOME"


class UserError(Exception):
    """Anything a person can fix: shown as one line, exit status 1."""


def _runtime():
    from ingest.runtime import Runtime

    return Runtime(Settings())


def _out(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A model's one-time export takes seconds to minutes: every command says what it is waiting for.
    logging.getLogger("ingest.backends.export").setLevel(logging.INFO)


def _service_logging() -> None:
    """Long-running commands (serve, worker) tell what they started and each video they finish, at INFO; one-shot
    commands stay quiet unless -v."""
    for package in ("schema", "ingest", "search_app"):
        logging.getLogger(package).setLevel(min(logging.getLogger(package).getEffectiveLevel(), logging.INFO))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default VIDSEARCH_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default VIDSEARCH_PORT, 7860).")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not run an ingestion worker here.")] = False,
) -> None:
    """Run the web app (Search, Upload, Library) and an ingestion worker.

    Example: vidsearch serve   then open http://127.0.0.1:7860
    """
    from search_app.web import serve as run_app

    _service_logging()
    runtime = _runtime()
    s = runtime.settings
    host, port = host or s.host, port or s.port
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during shutdown
        run_app(runtime, host, port, with_worker=not no_worker,
                on_ready=lambda: typer.echo(f"vidsearch: http://{host}:{port}  (data: {s.home_dir})", err=True))
    typer.echo("vidsearch: stopped (any video in progress was put back in the queue)", err=True)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Video files and/or folders.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Process the files now, in this process, and report.")] = False,
    link: Annotated[bool, typer.Option("--link", help="Index files where they are instead of copying them into "
                                                      "the data folder (delete then never removes them).")] = False,
    tag: Annotated[str | None, typer.Option("--tag", help="A label for these videos (e.g. the shoot or folder), "
                                                          "to filter searches by: `search --tag`.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Process the files now as a Ray Data job: decoding in Ray "
                                                    "tasks, the model in an actor per GPU (pip install "
                                                    "'vidsearch[ray]'). A local Ray unless --ray-address.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="The Ray cluster to run on (e.g. "
                                                                           "ray://head:10001, or auto); implies "
                                                                           "--ray.")] = None,
) -> None:
    """Add videos to the library. Videos are recognised by content; the same content is never embedded twice.

    Examples:
      vidsearch ingest ~/Videos --recursive --wait
      vidsearch ingest clip1.mp4 clip2.webm      (queued for `vidsearch worker` or `vidsearch serve`)
      vidsearch ingest /mnt/drone --tag drone -r
      vidsearch ingest /mnt/archive -r --ray --ray-address auto
    """
    from tqdm import tqdm

    from ingest.library import Outcome, enqueue_file, iter_candidate_files
    from schema.filters import check_tag
    from schema.storage import StorageError

    tag = check_tag(tag) if tag is not None else None  # a bad tag is refused before any file is touched
    ray = ray or ray_address is not None
    wait = wait or ray
    if ray:  # Ray missing or its cluster away: said before any file is touched
        from ingest.ray_ingest import RayUnavailable, connect

        try:
            connect(ray_address)
        except RayUnavailable as exc:
            typer.echo(f"vidsearch: {exc}", err=True)
            raise typer.Exit(2) from None

    runtime = _runtime()
    if link and runtime.settings.storage_is_remote:
        from ingest.library import LINK_REFUSED

        typer.echo(f"vidsearch: {LINK_REFUSED.format(runtime.settings.storage)}", err=True)
        raise typer.Exit(2)
    queued: dict[int, str] = {}  # job id -> source
    present: list[str] = []
    failed: list[tuple[str, str]] = []
    skipped = 0
    named = {p.resolve() for p in paths if not p.is_dir()}
    for p in paths:
        if not p.exists():
            failed.append((str(p), "no such file or folder"))
    candidates = [c for c in iter_candidate_files([p for p in paths if p.exists()], recursive)]
    for path in tqdm(candidates, desc="Scanning", unit="file", disable=not candidates, file=sys.stderr):
        try:
            r = enqueue_file(runtime.catalog, runtime.settings, path, link=link, tag=tag, storage=runtime.storage)
        except StorageError as exc:
            failed.append((str(path), f"cannot store: {exc}"))
            continue
        except OSError as exc:
            failed.append((str(path), f"cannot read: {exc.strerror or exc}"))
            continue
        if r.outcome is Outcome.NOT_VIDEO:
            if path.resolve() in named or path.suffix.lower() in VIDEO_SUFFIXES:
                failed.append((str(path), "not a video file (no decodable video stream)"))
            else:
                skipped += 1
        elif r.outcome is Outcome.ALREADY_PRESENT:
            present.append(str(path))
        elif r.job_id is not None:
            queued[r.job_id] = str(path)

    ingested = 0
    if wait and queued:
        ingested, job_failures = _process_now(runtime, queued, on_ray=ray)
        failed.extend(job_failures)
    elif queued:
        typer.echo(f"Queued {len(queued)} video(s). Run `vidsearch worker` (or `vidsearch serve`) to process them, "
                   "or use --wait.", err=True)

    typer.echo(
        f"{'Ingested' if wait else 'Queued'}: {ingested if wait else len(queued)}  "
        f"already present: {len(present)}  failed: {len(failed)}" + (f"  skipped (not video): {skipped}" if skipped
                                                                     else "")
    )
    for source, reason in failed:
        typer.echo(f"  failed: {source}: {reason}")
    runtime.close()
    if ray:
        from ingest.ray_ingest import shutdown

        shutdown()
    if failed:
        raise typer.Exit(1)


def _process_now(runtime, queued: dict[int, str], *, on_ray: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Run a worker here until our jobs are finished (some may be taken by another running worker). on_ray: its
    files are decoded and embedded on the connected Ray cluster, many hundreds of jobs claimed at a time."""
    import time

    from tqdm import tqdm

    from ingest.worker import Worker

    pending = set(queued)
    worker = Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings)
    if on_ray:
        from ingest.ray_ingest import CLAIM_SIZE, RayEmbedder

        worker.embedder = RayEmbedder(runtime.settings, worker.decode_request(), worker.decode_timeout)
        worker.claim_size = CLAIM_SIZE
    with worker, tqdm(total=len(queued), desc="Ingesting", unit="video", file=sys.stderr) as bar:

        def finished(job_id: int) -> None:
            if job_id in pending:
                pending.discard(job_id)
                bar.update(1)

        while pending:
            batch = worker.run_once(lambda r: finished(r.job_id))
            for j in [j for j in pending if (job := runtime.catalog.get_job(j)) is None
                      or job.state.value in ("done", "failed")]:
                finished(j)  # run by another worker
            if not batch and pending:
                time.sleep(0.5)  # the remaining jobs are being run by another worker
        _run_experts_now(runtime, worker)
    ok, failures = 0, []
    for job_id, source in queued.items():
        job = runtime.catalog.get_job(job_id)
        if job is not None and job.state.value == "done":
            ok += 1
        else:
            failures.append((source, job.error if job and job.error else "deleted while processing"))
    return ok, failures


def _weights(items: list[str]) -> dict[str, float]:
    """--weight NAME=W options -> {name: weight}."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("appearance", "speech", "text", "audio"):
            raise UserError(f"--weight {item!r}: use NAME=W with NAME one of appearance, speech, text, audio")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"--weight {item!r}: {value!r} is not a number") from None
        if not 0 <= out[name] <= 100:
            raise UserError(f"--weight {item!r}: the weight must be between 0 and 100")
    return out


def _run_experts_now(runtime, worker) -> None:
    """After the videos are searchable by appearance: run the experts queued for them, with a progress bar."""
    from tqdm import tqdm

    if worker.experts is None:
        return
    counts = runtime.catalog.expert_counts()
    waiting = sum(states.get("queued", 0) + states.get("running", 0) for states in counts.values())
    if not waiting:
        return
    with tqdm(total=waiting, desc="Experts", unit="run", file=sys.stderr) as bar:
        while worker.experts.run_once(lambda _r: bar.update(1)):
            pass


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


@app.command()
def worker() -> None:
    """Process queued jobs until interrupted (Ctrl-C requeues the job in progress)."""
    from ingest.worker import JobResult, Worker
    from search_app.present import experts_summary

    _service_logging()
    runtime = _runtime()
    w = Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings)
    stop = threading.Event()

    def report(r: JobResult) -> None:
        typer.echo(f"{'done' if r.ok else 'failed'}: video {r.video_id} {r.title}" + (f": {r.error}" if r.error
                                                                                       else ""), err=True)

    # SIGTERM behaves like Ctrl-C so service managers get the same clean requeue.
    signal.signal(signal.SIGTERM, _interrupt)
    runtime.store.milvus()  # connect, and refuse another model's collection, before saying ready
    typer.echo(f"worker ready (model {runtime.encoder.key}; experts: {experts_summary(runtime.settings)}); Ctrl-C to "
               "stop", err=True)
    try:
        w.run_forever(stop, report)
    except KeyboardInterrupt:
        typer.echo("worker stopped (any job in progress was put back in the queue)", err=True)
    finally:
        runtime.close()


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="What happens in the video.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Find videos that look like this still image "
                                                               "(PNG, JPEG, WebP, ...) instead.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Number of results.")] = 10,
    min_duration: Annotated[float | None, typer.Option(help="Only videos at least this long (seconds).")] = None,
    max_duration: Annotated[float | None, typer.Option(help="Only videos at most this long (seconds).")] = None,
    since: Annotated[str | None, typer.Option(help="Only videos ingested on or after this date (2026-11-23 or an "
                                                   "ISO date-time; UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Only videos ingested on or before this date (a whole day "
                                                   "when no time is given).")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="Only videos with this tag (repeat for any of "
                                                                 "several).")] = None,
    weight: Annotated[list[str] | None, typer.Option("--weight", help="How much an expert counts, as NAME=W "
                                                                       "(appearance, speech, text, audio; 0 turns "
                                                                       "one off; repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Find videos by description (what is seen, said or written on screen), or by a still image.

    Examples:
      vidsearch search "a man riding a bike" -k 5
      vidsearch search --image photo.jpg
      vidsearch search "sunset" --tag drone --max-duration 60 --since 2026-01-01
      vidsearch search "counted seventeen ships" --weight speech=1 --weight appearance=0.5

    Each result lists its best moments (start-end, score), e.g. `moments: 0:12-0:17 (0.312)`, and what was said
    or shown there when speech or on-screen text matched.
    """
    from schema.filters import SearchFilters
    from search_app.audio_query import expert_sources
    from search_app.search import MAX_IMAGE_BYTES, check_k, check_query, search_image, search_text

    # Everything a person can get wrong is refused here, before seconds of model loading.
    filters = SearchFilters.from_text(min_duration, max_duration, since, until, tags or ())
    if (query is None) == (image is None):
        raise UserError("give either a text query or --image PATH (exactly one)")
    check_k(k)
    if query is not None:
        query = check_query(query)
    weights = _weights(weight or [])
    if weights and image is not None:
        raise UserError("--weight applies to text queries; image queries use appearance alone")
    data = None
    if image is not None:
        if not image.is_file():
            raise UserError(f"no such image file: {image}")
        if image.stat().st_size > MAX_IMAGE_BYTES:
            raise UserError(f"{image} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        data = image.read_bytes()
    runtime = _runtime()
    moments = runtime.settings.moment_seconds
    if data is not None:
        results = search_image(runtime.catalog, runtime.store, runtime.encoder, data, k, filters,
                               moment_seconds=moments)
    else:
        assert query is not None
        results = search_text(runtime.catalog, runtime.store, runtime.encoder, query, k, filters,
                              moment_seconds=moments, experts=expert_sources(runtime), weights=weights)
    if as_json:
        _out([r.as_dict() for r in results])
        return
    if not results:
        typer.echo(("No results match the filters." if filters.active else "No results.")
                   if runtime.catalog.count_videos() else "No videos yet: add some with "
                   "`vidsearch ingest PATH --wait`.")
        return
    typer.echo(f"{'rank':>4}  {'score':>6}  {'id':>5}  {'duration':>8}  title / path")
    for r in results:
        duration = f"{r.duration:.1f}s" if r.duration is not None else "?"
        typer.echo(f"{r.rank:>4}  {r.score:>6.3f}  {r.video_id:>5}  {duration:>8}  {r.title}\n{'':>30}{r.path}")
        if r.experts:
            typer.echo(f"{'':>30}experts: " + ", ".join(f"{name} {'-' if v is None else f'{v:.3f}'}"
                                                         for name, v in r.experts.items()))
        spans = [m for m in r.moments if m.expert == "appearance"]
        if spans:
            typer.echo(f"{'':>30}moments: " + ", ".join(f"{clock(m.start)}-{clock(m.end)} ({m.score:.3f})"
                                                         for m in spans))
        for m in r.moments:
            if m.expert == "audio":
                typer.echo(f"{'':>30}heard at {clock(m.start)}-{clock(m.end)} ({m.score:.3f})")
            elif m.text is not None:
                verb = "said" if m.expert == "speech" else "shown"
                typer.echo(f"{'':>30}{verb} at {clock(m.start)}: {m.text}")


@app.command()
def watch(
    source: Annotated[str, typer.Argument(help="What FFmpeg opens: rtsp://, rtmp://, srt://, udp://, an HLS or "
                                                "MJPEG http(s) URL, a V4L2 device (/dev/video0) or a file.")],
    prompts: Annotated[list[str], typer.Option("--prompt", "-p", help="What to look for (repeatable).")],
    name: Annotated[str | None, typer.Option(help="The source's name in events (default: from the URL, without "
                                                  "credentials).")] = None,
    threshold: Annotated[float | None, typer.Option(help="An event opens when a prompt's smoothed cosine reaches "
                                                         "this (default VIDSEARCH_LIVE_THRESHOLD).")] = None,
    exit_threshold: Annotated[float | None, typer.Option(help="It closes when the score falls below this (default "
                                                              "VIDSEARCH_LIVE_EXIT_THRESHOLD).")] = None,
    min_seconds: Annotated[float | None, typer.Option(help="An event stays open at least this long (default "
                                                           "VIDSEARCH_LIVE_MIN_SECONDS).")] = None,
    fps: Annotated[float | None, typer.Option(help="Frames scored per second (default VIDSEARCH_LIVE_FPS).")] = None,
    realtime: Annotated[bool, typer.Option("--realtime", help="Play a file at its own pace, as a camera would "
                                                              "(default: as fast as the model goes).")] = False,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    record: Annotated[bool, typer.Option("--record", help="Keep each event as a clip (from 5 s before to 3 s "
                                                          "after, remuxed, not re-encoded) and add it to the "
                                                          "library, tagged with the source's name.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per finished event, a line each, "
                                                         "and nothing else on stdout.")] = False,
) -> None:
    """Watch a live source and report when a prompt is seen, as events with a start, an end and a thumbnail.

    Examples:
      vidsearch watch rtsp://user:pass@192.168.1.20/stream1 --prompt "a person at the door" --prompt "a delivery van"
      vidsearch watch doorbell.mp4 --realtime --prompt "a dog" --json

    A network source that drops is retried with backoff; times stay monotonic across reconnects. Ctrl-C, the end
    of a file or --max-seconds stop it, and an event still open is closed and reported.
    """
    from ingest.live import Event, LiveError, Source, Thresholds, Watched, Watcher, default_name, slug, watch_prompts
    from ingest.live_service import clip_recorder

    settings = Settings()
    try:
        enter = settings.live_threshold if threshold is None else threshold
        if exit_threshold is None:  # the configured gap, under whichever threshold applies
            exit_threshold = enter - (settings.live_threshold - settings.live_exit_threshold)
        thresholds = Thresholds(enter, exit_threshold,
                                settings.live_min_seconds if min_seconds is None else min_seconds)
        rate = settings.live_fps if fps is None else fps
        if max_seconds is not None and max_seconds <= 0:
            raise LiveError("--max-seconds must be above 0")
        runtime = _runtime()
        encoder = runtime.encoder
        stop = threading.Event()

        def report(kind: str, event: Event) -> None:
            if as_json:
                if kind == "end":
                    sys.stdout.write(json.dumps(event.as_json(), ensure_ascii=False) + "\n")
                    sys.stdout.flush()
                return
            if kind == "start":
                typer.echo(f"{event.name}: \"{event.prompt}\" seen at {event.start:.1f} s ({event.peak_score:.3f})")
            else:
                typer.echo(f"{event.name}: \"{event.prompt}\" {event.start:.1f}-{event.end:.1f} s, peak "
                           f"{event.peak_score:.3f}, {event.thumbnail}")

        watcher = Watcher(encoder, settings.live_dir, on_event=report)
        recorder = clip_recorder(runtime.catalog, settings, name or default_name(source)) if record else None
        feed = Source(source, fps=rate, decode_size=encoder.decode_size, realtime=realtime, stop=stop, name=name,
                      recorder=recorder)
        watched = watcher.add(Watched(feed, watch_prompts(prompts), thresholds))
    except LiveError as exc:
        raise UserError(str(exc)) from exc

    def _stop(*_args: object) -> None:
        if stop.is_set():  # asked twice: do not wait for a source stuck in a read
            raise KeyboardInterrupt
        typer.echo("stopping (open events are closed and reported; Ctrl-C again to quit at once)", err=True)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    typer.echo(f"watching {feed.shown} as {feed.name!r} for {len(watched.prompts)} prompt(s) at {rate:g} frames/s "
               f"(threshold {thresholds.enter:g}, exit {thresholds.leave:g}, at least {thresholds.min_seconds:g} s); "
               "Ctrl-C to stop", err=True)
    try:
        events = watcher.run(stop, max_seconds)
    finally:
        runtime.close()
    stats = feed.stats
    typer.echo(f"stopped: {len(events)} event(s); {stats.frames} frames read, {stats.dropped} dropped, "
               f"{stats.reconnects} reconnect(s)", err=True)
    if recorder is not None:
        typer.echo(f"{len(recorder.clips)} clip(s) queued for the library, tagged {slug(feed.name)[:64]!r} (a "
                   "running `vidsearch serve` or `vidsearch worker` ingests them)", err=True)
    if stats.state == "failed":
        raise UserError(stats.reason or "the source failed")


@app.command("list")
def list_videos(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N videos (oldest first).")
                     ] = None,
) -> None:
    """List the videos in the library (all of them, oldest first, unless --limit)."""
    runtime = _runtime()
    videos = runtime.catalog.list_videos() if limit is None else runtime.catalog.page_videos(limit)
    if as_json:
        _out([v.as_dict() for v in videos])
        return
    if not videos:
        typer.echo("No videos yet.")
        return
    for v in videos:
        duration = f"{v.duration:.1f}s" if v.duration is not None else "?"
        typer.echo(f"{v.id:>5}  {v.status.value:<10}  {duration:>8}  {v.title}" + (f"  [{v.tag}]" if v.tag else ""))


@app.command()
def delete(ids: Annotated[list[int], typer.Argument(help="Video ids (see `vidsearch list`).")]) -> None:
    """Delete videos: their vectors, catalog rows and stored files."""
    from ingest.library import delete_video

    runtime = _runtime()
    missing = []
    for video_id in ids:
        video = delete_video(runtime.catalog, runtime.store, video_id, runtime.settings.thumbnails_dir,
                             storage=runtime.storage)
        if video is None:
            missing.append(video_id)
        else:
            typer.echo(f"deleted {video_id}: {video.title}")
    if missing:
        raise UserError(f"no video with id {', '.join(map(str, missing))}")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False) -> None:
    """Jobs by state, and why failed ones failed; each expert's videos by state."""
    runtime = _runtime()
    counts = runtime.catalog.job_counts()
    workers = runtime.catalog.workers()
    lease = runtime.settings.lease_seconds
    for w in workers:  # past its lease, the next worker that looks takes the job over
        w["lease_expired"] = w["renewed_s_ago"] > lease
    failures = [{"job_id": j.id, "video_id": v.id, "title": v.title, "error": j.error}
                for j, v in runtime.catalog.failed_jobs()]
    experts = runtime.catalog.expert_counts()
    store = _vector_store_health(runtime)
    from ingest.experts.speech import describe_asr

    asr = describe_asr(runtime.settings) if "speech" in runtime.settings.expert_names else None
    runtime.close()
    if as_json:
        _out({"jobs": counts, "workers": workers, "failed": failures, "experts": experts, "speech_recognizer": asr,
              "vector_store": store})
        return
    typer.echo("  ".join(f"{state}: {n}" for state, n in counts.items()))
    for w in workers:
        note = " (lease expired: the job will be taken over)" if w["lease_expired"] else ""
        typer.echo(f"  worker {w['worker']}: {w['running']} running, renewed {w['renewed_s_ago']:.0f} s ago{note}")
    for f in failures:
        typer.echo(f"  failed: video {f['video_id']} {f['title']}: {f['error']}")
    for name, states in experts.items():
        typer.echo(f"{name}: " + "  ".join(f"{state}: {n}" for state, n in states.items()))
    if asr is not None:
        typer.echo(f"speech recognizer: {asr}")
    if store["reachable"]:
        typer.echo(f"vector store: reachable ({store['endpoint']}), {store['vectors']} vectors")
    else:
        typer.echo(f"vector store: NOT reachable ({store['endpoint']}): {store['error']}")


def _vector_store_health(runtime: Runtime) -> dict:
    """Whether Milvus answers, and how many vectors it holds. A probe: any failure is reported, not raised."""
    s = runtime.settings
    endpoint = s.milvus_uri or f"Milvus Lite in {s.milvus_lite_dir}"
    try:
        vectors = runtime.store.count()
    except Exception as exc:  # noqa: BLE001 (whatever the client raises, the answer is "not reachable, because")
        return {"endpoint": endpoint, "reachable": False, "error": str(exc).splitlines()[0][:300]}
    return {"endpoint": endpoint, "reachable": True, "vectors": vectors}


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is found.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Check that the catalog, the vectors and the stored files agree (orphan vectors, ready videos without
    vectors, duplicates, jobs of dead workers, missing files). Exit status 1 if a problem is left unrepaired."""
    from ingest.doctor import examine

    runtime = _runtime()
    # The collection as it is, whatever model built it: checking and repairing needs no model.
    findings = examine(runtime.catalog, runtime.store.existing(), runtime.settings,
                       lease_seconds=runtime.settings.lease_seconds, repair=repair,
                       lexical=runtime.store.lexical_existing(), storage=runtime.storage)
    runtime.close()
    if as_json:
        _out({"findings": [f.as_dict() for f in findings], "repaired": repair})
    elif not findings:
        typer.echo("All consistent: catalog, vectors and stored files agree.")
    else:
        for f in findings:
            ids = f" (videos {', '.join(map(str, f.video_ids[:20]))}{' …' if len(f.video_ids) > 20 else ''})" \
                if f.video_ids else ""
            typer.echo(f"{'repaired' if f.repaired else 'found'}: {f.kind}: {f.detail}{ids}")
        if not repair:
            typer.echo("Run `vidsearch doctor --repair` to fix these.")
    if any(not f.repaired for f in findings):  # an unreachable store is never repaired
        raise typer.Exit(1)


@app.command()
def reindex(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    experts: Annotated[str | None, typer.Option("--experts", help="Only run these experts (comma-separated: "
                                                                  "speech,text,audio) on the videos already "
                                                                  "indexed, leaving the appearance vectors "
                                                                  "alone.")] = None,
    again: Annotated[bool, typer.Option("--again", help="With --experts: also redo videos they are done with "
                                        "(audio: its collection is rebuilt, e.g. after changing VIDSEARCH_AUDIO_MODEL; "
                                        "speech: after changing VIDSEARCH_ASR).")
                     ] = False,
) -> None:
    """Drop all vectors and queue every video again (after changing VIDSEARCH_MODEL); or, with --experts, fill the
    experts' collections for the videos already indexed.

    Examples:
      vidsearch reindex --yes
      vidsearch reindex --experts speech,text     (resumable: run it again after an interruption)
    """
    if experts is not None:
        _reindex_experts(experts, again)
        return
    runtime = _runtime()
    videos = runtime.catalog.list_videos()
    if not yes:
        typer.confirm(f"Drop the vector collection and re-embed {len(videos)} video(s)?", abort=True)
    runtime.store.drop()
    for v in videos:
        runtime.catalog.requeue_video(v.id)
    typer.echo(f"Queued {len(videos)} video(s) for re-embedding with {runtime.settings.model}. "
               "Run `vidsearch worker` or `vidsearch serve` to process them.")


def _reindex_experts(names: str, again: bool) -> None:
    """Queue the experts' runs for the ready videos and carry them out here, with a progress bar per expert."""
    from tqdm import tqdm

    from ingest.expert_stage import ExpertStage
    from schema.settings import DENSE_EXPERTS, EXPERT_NAMES

    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in EXPERT_NAMES]
    if not wanted or unknown:
        raise UserError(f"--experts: {'unknown expert(s) ' + ', '.join(unknown) if unknown else 'name one'}; "
                        f"known: {', '.join(EXPERT_NAMES)}")
    runtime = _runtime()
    catalog = runtime.catalog
    for name in wanted:
        collection = runtime.store.lexical(name)  # a server without full-text search is refused here, before any work
        if again and name in DENSE_EXPERTS:  # its vectors may be another model's: rebuilt from nothing, never mixed
            collection.drop()
    queued = catalog.request_experts(wanted, again=again)
    counts = catalog.expert_counts()
    bars = {}
    for position, name in enumerate(wanted):
        state = counts.get(name, {})
        total = sum(state.values())
        bars[name] = tqdm(total=total, initial=total - state.get("queued", 0) - state.get("running", 0),
                          desc=f"{name:>7}", unit="video", file=sys.stderr, position=position)
    typer.echo(f"queued: {', '.join(f'{n} {queued[n]}' for n in wanted)}", err=True)
    stage = ExpertStage.from_settings(catalog, runtime.store.lexical, runtime.settings)
    try:
        while True:
            results = stage.run_once(lambda r: bars[r.expert].update(1) if r.expert in bars else None)
            if not results:  # nothing left that this process can claim (another worker may hold the rest)
                break
    except KeyboardInterrupt:
        typer.echo("stopped: the runs in progress were put back in the queue; run the same command to go on",
                   err=True)
        raise typer.Exit(130) from None
    finally:
        stage.close()
        for bar in bars.values():
            bar.close()
    counts = catalog.expert_counts()
    runtime.close()
    for name in wanted:
        state = counts.get(name, {})
        typer.echo(f"{name}: {state.get('done', 0)} done, {state.get('unavailable', 0)} with nothing to read, "
                   f"{state.get('failed', 0)} failed")


@app.command()
def migrate() -> None:
    """Bring the catalog's schema up to this version (every command also does it at start-up, under a lock).

    Example: vidsearch migrate   (after an upgrade, before starting several workers at once)
    """
    from schema.migrations import upgrade

    result = upgrade(Settings().catalog_url)
    if not result.changed:
        typer.echo(f"catalog schema: already at {result.to_revision}")
        return
    if result.stamped:
        typer.echo(f"catalog schema: made before migrations, recognised as {result.stamped}; now at "
                   f"{result.to_revision}")
    elif result.from_revision is None:
        typer.echo(f"catalog schema: created at {result.to_revision}")
    else:
        typer.echo(f"catalog schema: {result.from_revision} -> {result.to_revision}")


@app.command("move-library")
def move_library(
    to_database: Annotated[str | None, typer.Option("--to-database", help="SQLAlchemy URL of an empty database the "
                                                    "catalog moves to, e.g. postgresql+psycopg://user:pw@host/db.")
                           ] = None,
    to_milvus: Annotated[str | None, typer.Option("--to-milvus", help="Milvus endpoint the collections are copied "
                                                  "to, e.g. http://milvus-host:19530.")] = None,
    to_milvus_token: Annotated[str | None, typer.Option("--to-milvus-token", envvar="VIDSEARCH_MOVE_MILVUS_TOKEN",
                                                        help="Token (user:password or API key) of that endpoint.")
                               ] = None,
    to_storage: Annotated[str | None, typer.Option("--to-storage", help="Folder (e.g. a shared mount) or "
                                                   "s3://bucket/prefix the stored video files are copied to.")
                          ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Rows per catalog transaction and per read of a "
                                       "collection.")] = 1000,
) -> None:
    """Move this library (the one the settings describe) to a shared database, Milvus and/or folder; only what is
    given moves. Vectors are copied, never recomputed. Resumable: after an interruption run the same command again.

    Examples:
      vidsearch move-library --to-database postgresql+psycopg://vidsearch:pw@db/vidsearch \\
          --to-milvus http://milvus:19530 --to-storage /mnt/shared/videos
      vidsearch move-library --to-milvus http://milvus:19530      (only the vectors)
    """
    from tqdm import tqdm

    from ingest.move import MoveError, Plan
    from ingest.move import move_library as run_move

    def bar(desc: str, total: int):
        return tqdm(total=total, desc=f"{desc:>24}", unit="row" if desc != "videos" else "file", file=sys.stderr,
                    disable=total == 0)

    plan = Plan(database_url=to_database, milvus_uri=to_milvus, milvus_token=to_milvus_token, storage=to_storage,
                batch=batch)
    try:
        report = run_move(Settings(), plan, progress=bar)
    except MoveError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        typer.echo("stopped: run the same command again to go on from where it stopped", err=True)
        raise typer.Exit(130) from None
    if report.nothing_to_do:
        typer.echo("Nothing to move: already moved (a previous run of this command completed).")
    if report.catalog is not None:
        rows = ", ".join(f"{name} {n}" for name, n in report.catalog.rows.items() if n)
        typer.echo(f"catalog -> {report.catalog.destination}: {sum(report.catalog.copied.values())} rows copied "
                   f"now ({rows or 'empty'})")
    if report.storage is not None:
        s = report.storage
        typer.echo(f"videos -> {s.target}: {s.copied} files copied now, {s.already} already there")
        if s.linked:
            typer.echo(f"  {len(s.linked)} video(s) ingested in place (--link) stay where they are, e.g. {s.linked[0]}")
        for what, paths in (("missing at the source", s.missing), ("changed since ingest (not copied)", s.damaged)):
            if paths:
                typer.echo(f"  {len(paths)} file(s) {what}, e.g. {paths[0]}")
        typer.echo("  the original files are left in place: remove them once the moved library works")
    if report.vectors is not None:
        for c in report.vectors.collections:
            typer.echo(f"collection {c.name} -> {report.vectors.destination}: {c.rows} rows ({c.copied} copied now)")
    typer.echo("Set these now (for every vidsearch process: serve, worker, CLI):")
    for name, value in report.settings.items():
        hidden = "   (password hidden: put yours back)" if name == "VIDSEARCH_DATABASE_URL" and "***" in value else ""
        typer.echo(f"  {name}={value}{hidden}")
    if report.findings:
        typer.echo("doctor at the destination found:")
        for f in report.findings:
            typer.echo(f"  {f.kind}: {f.detail} (videos {', '.join(map(str, f.video_ids[:20]))})")
        typer.echo("Run `vidsearch doctor --repair` with the settings above to fix these.")
        raise typer.Exit(1)
    typer.echo("doctor at the destination: all consistent (catalog, vectors and stored files agree).")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Small corpus and sizes: a few minutes on 2 cores.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    model: Annotated[str | None, typer.Option(help="Checkpoint to measure (default VIDSEARCH_MODEL, or a random "
                                                   "ViT-B/32 when that cannot be loaded).")] = None,
    folder: Annotated[Path | None, typer.Option(help="Measure on these videos instead of a generated corpus.")] = None,
    search_only: Annotated[str | None, typer.Option(
        "--search-only", help="Only the search step, at these comma-separated sizes (e.g. 100000,1000000).")] = None,
    live: Annotated[bool, typer.Option("--live", help="Only live watching: UDP streams on 127.0.0.1, 1 and 4 at "
                                                      "once, and one fed too fast for 10 minutes (1 with --quick).")
                    ] = False,
    on_ray: Annotated[bool, typer.Option("--ray", help="Only ingestion on Ray: the single worker, then the same "
                                                       "clips as a Ray Data job on a local Ray (`ingest --ray`).")
                      ] = False,
) -> None:
    """Measure ingestion and search against a naive baseline and ceilings, all in the same run.

    Example: vidsearch bench --quick
    """
    from search_app.bench import format_search, format_table, run, run_search_only

    if live:
        from search_app.bench_live import format_live, run_live

        report = run_live(Settings(), quick=quick, model=model,
                          progress=lambda msg: typer.echo(f"[bench] {msg}", err=True))
        if as_json:
            _out(report)
        else:
            for line in format_live(report):
                typer.echo(line)
        return
    if on_ray:
        from ingest.ray_ingest import RayUnavailable
        from search_app.bench_ray import format_ray, run_ray

        try:
            report = run_ray(Settings(), quick=quick, model=model, folder=folder,
                             progress=lambda msg: typer.echo(f"[bench] {msg}", err=True))
        except RayUnavailable as exc:
            typer.echo(f"vidsearch: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            _out(report)
        else:
            for line in format_ray(report):
                typer.echo(line)
        return
    if search_only:
        try:
            sizes = tuple(int(n) for n in search_only.split(","))
        except ValueError:
            raise typer.BadParameter("--search-only takes sizes like 100000,1000000") from None
        report = run_search_only(Settings(), sizes, progress=lambda msg: typer.echo(f"[bench] {msg}", err=True))
        if as_json:
            _out(report)
        else:
            for line in format_search(report):
                typer.echo(line)
        return
    report = run(Settings(), quick=quick, model=model, folder=folder,
                 progress=lambda msg: typer.echo(f"[bench] {msg}", err=True))
    if as_json:
        _out(report)
    else:
        for line in format_table(report):
            typer.echo(line)


@app.command()
def evaluate(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    clips: Annotated[int, typer.Option(help="Clips in the generated corpus (at least 60).")] = 60,
    queries_per_kind: Annotated[int, typer.Option(help="Queries of each kind: appearance, speech, text (at least "
                                                       "50; half tune, half are held out).")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the corpus, the queries and the split.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Keep the corpus, data folder and report.json here.")] = None,
    model: Annotated[Path | None, typer.Option(hidden=True, help="A tiny CLIP already built by "
                                                                 "search_app/tiny_clip.py (the tests').")] = None,
    long_minutes: Annotated[float, typer.Option(hidden=True, help="Length of the memory figure's long video.")
                            ] = 10.0,
) -> None:
    """Recall@1/@5 of appearance alone, each expert alone and fused, on a generated corpus (tiny CLIP of colours and
    shapes, festival speech, on-screen words), plus ingest cost per expert, query latency and expert memory.

    Example: vidsearch evaluate --json > evaluation.json
    """
    from tqdm import tqdm

    from search_app.evaluate import Plan, check_plan, format_table, run

    plan = Plan(clips=clips, queries_per_kind=queries_per_kind, seed=seed, long_minutes=long_minutes)
    try:
        check_plan(plan)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    bars: list = []

    def bar(desc: str, total: int):
        progress = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
        bars.append(progress)

        def tick(done: int, of: int) -> None:
            progress.total = of
            progress.n = done
            progress.refresh()

        return tick

    def say(msg: str) -> None:
        while bars:
            bars.pop().close()
        typer.echo(f"[evaluate] {msg}", err=True)

    try:
        report = run(Settings(), plan, out=out, progress=say, bar=bar, model=model)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    finally:
        while bars:
            bars.pop().close()
    if as_json:
        _out(report)
    else:
        for line in format_table(report):
            typer.echo(line)


@milvus_app.command("stop")
def milvus_stop() -> None:
    """Stop the embedded Milvus Lite server of this data folder (it is restarted on demand)."""
    from schema.lite_server import stop_server

    settings = Settings()
    typer.echo("stopped" if stop_server(settings.milvus_lite_dir) else "no server was running")


@app.command()
def loadtest(
    clients: Annotated[int, typer.Option(min=1, max=1000, help="Concurrent clients.")] = 20,
    seconds: Annotated[float, typer.Option(min=1, max=3600, help="How long the clients search.")] = 20.0,
    url: Annotated[str | None, typer.Option(help="Load this running app (e.g. http://127.0.0.1:7860) instead of a "
                                                 "throwaway one that ingests while it is searched.")] = None,
    auth: Annotated[str | None, typer.Option(help="user:password for an app with VIDSEARCH_AUTH (with --url).")
                    ] = None,
    target: Annotated[str, typer.Option(help="api (POST /api/search) or gradio (the Search tab's queue).")] = "api",
    videos: Annotated[int, typer.Option(min=1, help="Clips uploaded as a self-contained run starts, ingested "
                                                     "during it.")] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Concurrent clients search over HTTP for a bounded time; throughput, p50/p95/p99 latency and errors.

    Without --url: a throwaway `vidsearch serve` (worker included) on 127.0.0.1 ingests generated clips meanwhile.

    Examples:
      vidsearch loadtest --clients 20 --seconds 20
      vidsearch loadtest --url http://127.0.0.1:7860 --json
    """
    from search_app.loadtest import LoadTestError, format_report, parse_auth, run_against, run_self_contained, to_json

    if target not in ("api", "gradio"):
        raise UserError("--target is api or gradio")
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: the throwaway server and its Milvus Lite are stopped
    try:
        if url is not None:
            report = run_against(url, clients, seconds, auth=parse_auth(auth), target=target)  # type: ignore[arg-type]
        else:
            if auth is not None:
                raise UserError("--auth goes with --url (the throwaway app has no login)")
            report = run_self_contained(Settings(), clients, seconds, videos=videos, target=target,  # type: ignore[arg-type]
                                        progress=lambda msg: typer.echo(f"[loadtest] {msg}", err=True))
    except LoadTestError as exc:
        raise UserError(" ".join(str(exc).split()) or "the load test failed") from None
    if as_json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        for line in format_report(report):
            typer.echo(line)
    if report.load.errors:
        raise typer.Exit(1)


@app.command()
def capacity(
    dim: Annotated[int, typer.Option(min=8, help="Vector dimension of the model (ViT-B/32: 512).")] = 512,
    seconds: Annotated[float, typer.Option(min=1, help="Length of a typical video, in seconds.")] = 30.0,
) -> None:
    """Capacity on paper: Milvus memory and PostgreSQL size per video, for 1M and 10M videos, per index type, and
    the embedding time of a million video-minutes. Computed from the schema and measured figures, not measured.

    Example: vidsearch capacity --seconds 300
    """
    from search_app.capacity import markdown

    typer.echo(markdown(Settings(), dim=dim, seconds=seconds))


def main() -> None:
    """Console entry point: turn known errors into one readable line instead of a traceback."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import SQLAlchemyError

    from ingest.encoder import ModelUnavailableError
    from schema.lite_server import LiteServerError
    from schema.migrations import MigrationError
    from schema.vectors import VectorStoreError
    from search_app.search import QueryError

    try:
        code = app(standalone_mode=False)  # click returns the exit code of typer.Exit in this mode
        sys.exit(code if isinstance(code, int) else 0)
    except (UserError, ModelUnavailableError, VectorStoreError, LiteServerError, QueryError, MigrationError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except (ValidationError, SettingsError) as exc:
        typer.echo(f"Error: invalid configuration: {exc}", err=True)
        sys.exit(2)
    except SQLAlchemyError as exc:
        typer.echo(f"Error: the catalog database failed ({VIDSEARCH_DB_HINT}): {exc}", err=True)
        sys.exit(1)
    except (OSError, ModuleNotFoundError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors carry their own formatting
        import click

        # Typer 0.29 parses with its own copy of click, whose usage errors are TyperExceptions, not click's.
        if isinstance(exc, (click.ClickException, typer.TyperException)) and hasattr(exc, "show"):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
