"""`vidsearch bench --ray`: what running ingestion as a Ray Data job costs against the single worker, on the same
corpus and the same machine. Both take the same clips from the queue to searchable, each into a data folder of its
own: the single worker with its decode processes and model in one process (`ingest --wait`), the Ray job with
decode tasks and a model actor on a local Ray (`ingest --ray`). Ray's own start (once per cluster, not per job) is
reported beside the figures, not inside them; the actors' start is inside (each Ray pipeline run pays it).

The ratio is the point: on one machine Ray can only add overhead (object store copies, scheduling), so this says
what a cluster must win back; the target is an overhead under 20 %.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ingest.encoder import ClipEncoder
from schema.settings import Settings
from search_app.bench import FULL, QUICK, bench_model, make_corpus, measure_pipeline

MAX_OVERHEAD = 0.20  # the Ray job's videos/s may fall at most this far below the single worker's on one machine


def measure_ray_pipeline(settings: Settings, encoder: ClipEncoder, clips: list[Path]) -> float:
    """Seconds for `ingest --ray`'s worker (the connected Ray cluster decoding and embedding) to take `clips` from
    the queue to searchable (Milvus + catalog)."""
    from ingest.library import enqueue_file
    from ingest.ray_ingest import CLAIM_SIZE, RayEmbedder
    from ingest.worker import Worker
    from schema.catalog import Catalog
    from schema.vectors import MilvusVectorStore

    catalog = Catalog(settings.catalog_url)
    store = MilvusVectorStore.open(settings, encoder.dim, encoder.model_key)
    for clip in clips:
        enqueue_file(catalog, settings, clip, link=True, check_video=False)
    with Worker.from_settings(catalog, store, encoder, settings) as worker:
        worker.embedder = RayEmbedder(settings, worker.decode_request(), worker.decode_timeout)
        worker.claim_size = CLAIM_SIZE
        start = time.perf_counter()
        results = worker.run_until_empty()
        elapsed = time.perf_counter() - start
    catalog.close()
    store.close()
    if failed := [r.error for r in results if not r.ok]:
        raise RuntimeError(f"the Ray job failed on the bench corpus: {failed[:3]}")
    return elapsed


def compare(settings: Settings, encoder: ClipEncoder, clips: list[Path], work: Path) -> dict:
    """The single worker and the Ray job on the same clips, each into its own data folder."""
    import ray

    from ingest.ray_ingest import connect, shutdown

    def home(name: str) -> Settings:
        # The actors load the model the bench measures, from where the bench put it (a random ViT-B/32 perhaps),
        # finding its exports where the bench's own load left them (as `ingest --ray`'s driver leaves them).
        s = settings.model_copy(update={"home": work / name, "database_url": None, "collection": f"bench_{name}",
                                        "storage": None, "model": encoder.model_id,
                                        "model_revision": None if Path(encoder.model_id).is_dir()
                                        else settings.model_revision, "export_dir": work / "models"})
        s.ensure_dirs()
        return s

    single_s = measure_pipeline(home("single"), encoder, clips)
    began = time.perf_counter()
    connect(None)
    ray_start_s = time.perf_counter() - began
    try:
        resources = ray.cluster_resources()
        ray_s = measure_ray_pipeline(home("ray"), encoder, clips)
    finally:
        shutdown()
    single_vps, ray_vps = len(clips) / single_s, len(clips) / ray_s
    ratio = ray_vps / single_vps
    gpus = int(resources.get("GPU", 0))
    return {"videos": len(clips), "single_videos_per_s": round(single_vps, 3), "ray_videos_per_s": round(ray_vps, 3),
            "ratio": round(ratio, 3), "overhead": round(1 - ratio, 3), "max_overhead": MAX_OVERHEAD,
            "met": 1 - ratio <= MAX_OVERHEAD, "ray_start_s": round(ray_start_s, 1),
            "ray_cpus": int(resources.get("CPU", 0)), "ray_gpus": gpus, "decode_cpus": settings.ray_decode_cpus,
            "actors": settings.ray_actors or max(1, gpus)}


def run_ray(settings: Settings, *, quick: bool = True, model: str | None = None, folder: Path | None = None,
            progress: Callable[[str], None] = lambda _msg: None) -> dict:
    with tempfile.TemporaryDirectory(prefix="vidsearch-bench-ray-") as tmp:
        work = Path(tmp)
        progress("loading the model")
        encoder, model_name = bench_model(settings, model, work)
        if folder:
            clips = sorted(p for p in folder.iterdir() if p.is_file())
        else:
            progress("encoding the corpus")
            clips = [c for cs in make_corpus(work / "corpus", QUICK if quick else FULL).values() for c in cs]
        progress("single worker, then the same clips on a local Ray")
        report = compare(settings, encoder, clips, work)

        from schema.lite_server import stop_server

        if not settings.milvus_uri:
            for name in ("single", "ray"):
                stop_server(settings.model_copy(update={"home": work / name}).milvus_lite_dir)
    return {"model": model_name, "frames_per_video": settings.frames, "decode_workers": settings.decode_workers,
            **report}


def format_ray(report: dict) -> Iterator[str]:
    verdict = "met" if report["met"] else "NOT met"
    yield (f"model {report['model']} · {report['frames_per_video']} frames/video · {report['videos']} videos · "
           f"Ray: {report['ray_cpus']} CPUs, {report['ray_gpus']} GPUs, {report['actors']} model actor(s), "
           f"{report['decode_cpus']:g} CPU per decode task")
    yield (f"ingest    single worker {report['single_videos_per_s']:.2f} videos/s ({report['decode_workers']} decode "
           f"processes)  on Ray {report['ray_videos_per_s']:.2f} videos/s -> x{report['ratio']:.2f}, overhead "
           f"{report['overhead']:.0%} (target under {report['max_overhead']:.0%}: {verdict}; Ray started in "
           f"{report['ray_start_s']:.1f} s, not counted)")
