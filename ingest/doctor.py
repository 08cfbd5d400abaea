"""`vidsearch doctor [--repair]`: find (and fix) disagreements between the catalog, Milvus and the stored files.

The write order makes most of these impossible in normal operation (vectors are written before a video is marked
ready; a retried job replaces what it left), so a finding means a crash outside that order, a file removed behind
our back, or a bug. Reads are ordered so that a worker running at the same time never causes a false finding:
the ready set is read before the vectors (vectors precede readiness), the vectors before the catalog rows (rows
precede vectors).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ingest import thumbnails
from schema.catalog import Catalog, VideoStatus
from schema.settings import Settings
from schema.storage import Storage, StorageError, is_remote, open_storage
from schema.vectors import VectorStore, VideoFields

# A `.incoming-*` copy older than this belongs to an upload that died; younger ones may still be being written.
STALE_TEMP_SECONDS = 3600.0
MISSING_FILE = "the stored file is missing (moved or deleted outside vidsearch); add the video again"
UNREACHABLE = "storage_unreachable"


@dataclass
class Finding:
    kind: str
    detail: str
    video_ids: list[int] = field(default_factory=list)
    repaired: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class LexicalCounts(Protocol):
    """What doctor needs of an expert's collection (schema/lexical.py)."""

    def counts(self) -> Counter[int]: ...
    def delete(self, video_ids: Sequence[int]) -> None: ...
    def flush(self) -> None: ...


def examine(catalog: Catalog, store: VectorStore | None, settings: Settings, *, lease_seconds: float,
            repair: bool = False, lexical: Mapping[str, LexicalCounts] | None = None,
            storage: Storage | None = None) -> list[Finding]:
    """Every inconsistency found, each repaired when `repair` is set. `lexical`: the experts' collections;
    `storage`: the video store (default: the settings'). A store that cannot be reached is a finding of its own,
    never repaired, and its videos are not taken for missing."""
    findings: list[Finding] = []
    storage = storage or open_storage(settings)

    def found(kind: str, detail: str, ids: list[int], fix) -> None:
        if not ids and kind not in ("stale_temp_files", "orphan_thumbnails"):
            return
        finding = Finding(kind, detail, sorted(ids))
        if repair:
            fix()
            finding.repaired = True
        findings.append(finding)

    dead = [job.video_id for job in catalog.dead_jobs(lease_seconds, settings.worker_id)]
    found("dead_worker_jobs", "jobs left running by a worker that is gone: requeued", dead,
          lambda: catalog.recover(lease_seconds, max_attempts=10**9, identity=settings.worker_id))

    before = catalog.video_states()
    remote_sizes: dict[str, int] | None = None  # every object of the store, listed once
    if any(is_remote(path) for _, path in before.values()) or storage.remote:
        try:
            if not storage.remote:
                raise StorageError("videos of the catalog are in object storage but VIDSEARCH_STORAGE is not an "
                                   "s3:// URL")
            remote_sizes = storage.sizes()
        except StorageError as exc:
            findings.append(Finding(UNREACHABLE, f"the video store cannot be reached, its videos were not checked: "
                                    f"{exc}"))
    folder_down = False  # a shared folder (VIDSEARCH_STORAGE=/mnt/...) that is not mounted: its files are not missing
    if settings.storage and not storage.remote:
        try:
            storage.check()
        except StorageError as exc:
            folder_down = True
            findings.append(Finding(UNREACHABLE, f"the video folder cannot be read, its videos were not checked: "
                                    f"{exc}"))

    def is_missing(path: str) -> bool:
        if is_remote(path):
            return remote_sizes is not None and path not in remote_sizes
        if folder_down and storage.key_of(path) is not None:
            return False
        return not Path(path).exists()

    missing = [v for v, (status, path) in before.items() if status is not VideoStatus.FAILED and is_missing(path)]

    def fail_missing() -> None:
        for v in missing:
            catalog.fail_video(v, MISSING_FILE)
        if store is not None:
            store.delete(missing)

    found("missing_files", "videos whose stored file is gone: marked failed, vectors removed", missing, fail_missing)

    if store is not None:
        ready_before = {v for v, (status, _) in catalog.video_states().items() if status is VideoStatus.READY}
        counts = store.vector_counts()
        after = catalog.video_states()
        orphans, failed = _orphans_and_failed(counts, after)
        found("orphan_vectors", "vectors of videos the catalog does not have: deleted", orphans,
              lambda: store.delete(orphans))
        found("vectors_of_failed_videos", "vectors of failed videos (never searchable): deleted", failed,
              lambda: store.delete(failed))
        unindexed = [v for v in ready_before if v in after and after[v][0] is VideoStatus.READY and counts[v] == 0]

        def requeue() -> None:
            for v in unindexed:
                try:
                    catalog.requeue_video(v)
                except KeyError:  # deleted meanwhile
                    pass

        found("ready_without_vectors", "ready videos with no vector (unsearchable): queued again", unindexed,
              requeue)
        duplicated = [v for v, n in counts.items() if n > 1 and v in after and after[v][0] is VideoStatus.READY]

        def dedupe() -> None:
            vectors = store.fetch(duplicated)
            store.delete(duplicated, segments=False)  # the segments are not duplicated: keep them
            if vectors:
                import numpy as np

                videos = catalog.videos_by_ids(list(vectors))  # the filterable fields go back with the vector
                store.add(list(vectors), np.stack(list(vectors.values())),
                          [VideoFields.of(videos[v]) if v in videos else VideoFields() for v in vectors])

        found("duplicate_vectors", "videos with more than one vector: one kept", duplicated, dedupe)

        # Segment vectors follow the same order (written before the video is ready, deleted with it).
        seg_orphans, seg_failed = _orphans_and_failed(store.segment_counts(), catalog.video_states())
        found("orphan_segments", "segment vectors of videos the catalog does not have: deleted", seg_orphans,
              lambda: store.delete(seg_orphans))
        found("segments_of_failed_videos", "segment vectors of failed videos (never searchable): deleted", seg_failed,
              lambda: store.delete(seg_failed))
        if repair and (orphans or failed or duplicated or missing or seg_orphans or seg_failed):
            store.flush()

    for expert, collection in (lexical or {}).items():
        _examine_expert(catalog, expert, collection, lease_seconds, found, settings.worker_id)

    # Thumbnails are written before a video is ready and removed with it; a folder whose content hash the catalog
    # does not know belongs to a deleted video (listed first: a video's row always precedes its thumbnails).
    thumbs_before = thumbnails.stored_hashes(settings.thumbnails_dir)
    known = {v.sha256 for v in catalog.list_videos()}
    stray = sorted(thumbs_before - known)
    if stray:
        found("orphan_thumbnails", f"{len(stray)} thumbnail folders of videos no longer in the catalog: removed", [],
              lambda: [thumbnails.remove(settings.thumbnails_dir, sha) for sha in stray])

    now = time.time()
    stale = [p for p in settings.videos_dir.rglob(".incoming-*")
             if p.is_file() and now - p.stat().st_mtime > STALE_TEMP_SECONDS] if settings.videos_dir.exists() else []
    if settings.storage_is_remote and settings.storage_cache_dir.exists():  # uploads' and downloads' partial copies
        stale += [p for p in settings.storage_cache_dir.iterdir() if p.name.startswith((".incoming-", ".part-"))
                  and p.is_file() and now - p.stat().st_mtime > STALE_TEMP_SECONDS]
    if stale:
        found("stale_temp_files", f"{len(stale)} partial upload copies: removed", [],
              lambda: [p.unlink(missing_ok=True) for p in stale])
    return findings


def _examine_expert(catalog: Catalog, expert: str, collection: LexicalCounts, lease_seconds: float, found,
                    identity: str | None) -> None:
    """An expert's collection against the catalog's record of its runs (rows are written before a run is done)."""
    dead = catalog.dead_expert_runs(expert, lease_seconds, identity)
    found(f"dead_{expert}_runs", f"{expert} runs left running by a worker that is gone: queued again", dead,
          lambda: catalog.recover_expert_runs(lease_seconds, identity))
    recorded_before = catalog.expert_segment_counts(expert)
    rows = collection.counts()
    states = catalog.video_states()
    orphans = [v for v in rows if v not in states or states[v][0] is VideoStatus.FAILED]

    def delete_orphans() -> None:
        collection.delete(orphans)
        collection.flush()

    found(f"orphan_{expert}_segments", f"{expert} segments of videos the catalog does not have (or failed): deleted",
          orphans, delete_orphans)
    recorded = catalog.expert_segment_counts(expert)
    wrong = [v for v, n in recorded.items() if recorded_before.get(v) == n and rows.get(v, 0) != n]
    found(f"{expert}_segments_mismatch", f"videos whose stored {expert} segments differ from what the catalog "
          f"recorded (lost or doubled by a crash): {expert} queued again for them", wrong,
          lambda: catalog.queue_experts_for(wrong, expert))


def _orphans_and_failed(counts: Counter[int], states: dict[int, tuple[VideoStatus, str]]
                        ) -> tuple[list[int], list[int]]:
    """Videos with vectors (per `counts`) that the catalog lacks, and those whose video failed."""
    orphans = [v for v in counts if v not in states]
    failed = [v for v in counts if v in states and states[v][0] is VideoStatus.FAILED]
    return orphans, failed
