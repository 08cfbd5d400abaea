"""`vidsearch move-library`: move a library to where several machines can share it, without starting over.

Three stages, each optional and each resumable (a rerun after an interruption goes on; after completion it has
nothing to do and says so), run in this order:

1. catalog (ingest/move/catalog.py): every table's rows into another database (SQLite -> PostgreSQL);
2. storage (ingest/move/storage.py): the video files the library owns into another store (a folder or S3), the
   catalog's stored paths rewritten;
3. vectors (ingest/move/vectors.py): every collection of the library onto another Milvus endpoint, vectors copied.

The source is the library the settings describe (VIDSEARCH_HOME, VIDSEARCH_DATABASE_URL, ...); it is only read
(apart from stored paths when the files move but the catalog does not) and stays usable until the settings point at
the destination. Every destination is checked before anything is written. At the end `vidsearch doctor`'s checks
run against the destination.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ingest.move.catalog import CatalogReport, check_empty, check_quiet, copy_catalog, open_destination, shown_url
from ingest.move.common import BatchHook, MoveError, Progress, no_hook, no_progress
from ingest.move.state import STATE_FILE, MoveState
from ingest.move.storage import StorageReport, VideoTarget, copy_video_files, storage_target
from ingest.move.vectors import VectorReport, check_destination, copy_vectors, library_collections
from schema.catalog import Catalog
from schema.settings import Settings

__all__ = ["MoveError", "MoveReport", "Plan", "move_library"]

MILVUS_SCHEMES = ("http", "https", "tcp", "grpc", "grpcs", "unix")


@dataclass(frozen=True)
class Plan:
    """What moves where; None: that part stays."""

    database_url: str | None = None
    milvus_uri: str | None = None
    milvus_token: str | None = None
    storage: str | Path | None = None  # a folder (shared mount) or s3://bucket/prefix; see storage.storage_target
    batch: int = 1000  # catalog rows per transaction, collection rows per read (and per state record)


@dataclass
class MoveReport:
    catalog: CatalogReport | None = None
    storage: StorageReport | None = None
    vectors: VectorReport | None = None
    settings: dict[str, str] = field(default_factory=dict)  # what to set now (passwords and tokens hidden)
    findings: list = field(default_factory=list)  # doctor's findings at the destination (ingest/doctor.Finding)

    @property
    def nothing_to_do(self) -> bool:
        return all(part is None or part.nothing_to_do for part in (self.catalog, self.storage, self.vectors))


def check_milvus_uri(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme not in MILVUS_SCHEMES or not (parsed.netloc or parsed.path):
        raise MoveError(f"--to-milvus: {uri!r} is not a Milvus endpoint URI; e.g. http://milvus-host:19530")


def move_library(settings: Settings, plan: Plan, *, progress: Progress = no_progress, on_batch: BatchHook = no_hook,
                 target: VideoTarget | None = None) -> MoveReport:
    """Move what `plan` names (see the module's docstring). `target`: the store the video files go to (default: a
    FolderTarget on plan.storage). Raises MoveError for anything a person must fix first."""
    from pymilvus.exceptions import MilvusException

    if plan.batch < 1:
        raise MoveError("--batch must be at least 1")
    if target is None and plan.storage is not None:
        target = storage_target(plan.storage, settings)
    if not (plan.database_url or plan.milvus_uri or target is not None):
        raise MoveError("nothing to move: give --to-database, --to-milvus and/or --to-storage")
    if plan.milvus_uri:
        check_milvus_uri(plan.milvus_uri)
    settings.ensure_dirs()
    state = MoveState(settings.home_dir / STATE_FILE)
    report = MoveReport()
    with contextlib.ExitStack() as stack:
        source = Catalog(settings.catalog_url)
        stack.callback(source.close)
        check_quiet(source, settings.lease_seconds)
        # Every destination is checked before anything is written to any of them.
        if plan.database_url:
            engine = open_destination(plan.database_url, settings.catalog_url)
            try:
                if state.section("catalog", plan.database_url) is None:
                    check_empty(engine, plan.database_url)
            finally:
                engine.dispose()
        clients = None
        if plan.milvus_uri:
            clients = _milvus_clients(settings, plan, stack)
            try:
                names = check_destination(*clients, library_collections(settings), state, plan.milvus_uri)
            except MilvusException as exc:
                raise MoveError(f"the Milvus endpoints could not be read: {exc}") from exc

        if plan.database_url:
            report.catalog = copy_catalog(source, plan.database_url, state, batch=plan.batch, progress=progress,
                                          on_batch=on_batch)
            report.settings["VIDSEARCH_DATABASE_URL"] = shown_url(plan.database_url)
        if target is not None:
            catalog = source
            if plan.database_url:
                catalog = Catalog(plan.database_url)
                stack.callback(catalog.close)
            report.storage = copy_video_files(catalog, target, progress=progress, on_batch=on_batch)
            report.settings["VIDSEARCH_STORAGE"] = str(target)
        if clients is not None:
            report.vectors = copy_vectors(*clients, plan.milvus_uri, names, state, batch=plan.batch,
                                          progress=progress, on_batch=on_batch)
            report.settings["VIDSEARCH_MILVUS_URI"] = plan.milvus_uri
            if plan.milvus_token:
                report.settings["VIDSEARCH_MILVUS_TOKEN"] = "<the token given with --to-milvus-token>"
    report.findings = examine_destination(settings, plan)
    return report


def _milvus_clients(settings: Settings, plan: Plan, stack: contextlib.ExitStack):
    """(source client, destination client), both closed with `stack`."""
    from schema.vectors import VectorStoreError, connect, resolve_uri

    source = connect(settings)
    stack.callback(source.close)
    source_uri = resolve_uri(settings)
    if urlparse(source_uri)[:3] == urlparse(plan.milvus_uri)[:3]:
        raise MoveError(f"--to-milvus is the Milvus endpoint in use now ({source_uri}): give another one")
    try:
        destination = connect(destination_settings(settings, plan))
    except VectorStoreError as exc:
        raise MoveError(f"cannot reach the destination Milvus: {exc}") from exc
    stack.callback(destination.close)
    return source, destination


def destination_settings(settings: Settings, plan: Plan) -> Settings:
    """The settings of the library once moved: the source's, with what moved pointing at its destination."""
    update: dict = {}
    if plan.database_url:
        update["database_url"] = plan.database_url
    if plan.milvus_uri:
        update["milvus_uri"] = plan.milvus_uri
        update["milvus_token"] = plan.milvus_token
    if plan.storage is not None:
        update["storage"] = str(plan.storage)
    return settings.model_copy(update=update)


def examine_destination(settings: Settings, plan: Plan) -> list:
    """`vidsearch doctor` (checks only, no repair) on the moved library."""
    from ingest.doctor import examine
    from ingest.runtime import Runtime
    runtime = Runtime(destination_settings(settings, plan))
    try:
        return examine(runtime.catalog, runtime.store.existing(), runtime.settings,
                       lease_seconds=runtime.settings.lease_seconds, lexical=runtime.store.lexical_existing(),
                       storage=runtime.storage)
    finally:
        runtime.close()
