"""What determines a collection's vectors: checkpoint snapshot, precision class, dimension (and the name it went by).

Pure data: the encoder (ingest/) builds a ModelKey, the vector store records it on its collections and refuses to
mix vectors of another key. A hub checkpoint's snapshot is the commit its revision resolved to; a local folder's is
a content hash of its weight files ("sha256:..."), so replacing the files in place is noticed too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath

# Collection properties (Milvus stores strings). Collections made before snapshots were recorded have only
# PROP_MODEL ("<hub id>@<revision>", "<hub id>" or a folder path) and PROP_DIM.
PROP_MODEL = "vidsearch.model"
PROP_REVISION = "vidsearch.revision"
PROP_SNAPSHOT = "vidsearch.snapshot"
PROP_PRECISION = "vidsearch.precision"
PROP_DIM = "vidsearch.dim"

# Precision classes: vectors of one class are interchangeable. fp32 on CPU and torch fp16 on CUDA (today's GPU
# default) are both "exact": they agree to float precision in ranking terms, so a GPU worker and a CPU web app
# share one library. Reduced precisions (the ONNX/OpenVINO backends' int8 and bf16) get classes of their own.
PRECISION_EXACT = "exact"
PRECISION_BF16 = "bf16"
PRECISION_INT8 = "int8"

FOLDER_HASH_PREFIX = "sha256:"  # the snapshot of a local folder; a hub snapshot is a bare 40-hex commit


@dataclass(frozen=True)
class ModelKey:
    """The identity of a vector space. Two keys with equal snapshot, precision and dim make comparable vectors;
    `model` and `revision` only say what the checkpoint was called (two hub ids or folders holding one snapshot
    are the same space)."""

    model: str  # hub id or resolved folder path
    snapshot: str  # hub commit hash, or FOLDER_HASH_PREFIX + content hash of a folder's weights
    precision: str
    dim: int
    revision: str | None = None  # the hub revision asked for ("main", a tag, a commit); None for folders

    @property
    def is_folder(self) -> bool:
        return self.snapshot.startswith(FOLDER_HASH_PREFIX)

    @property
    def short_snapshot(self) -> str:
        if self.is_folder:
            return self.snapshot[: len(FOLDER_HASH_PREFIX) + 12]
        return self.snapshot[:12]

    @property
    def key(self) -> str:
        """Printable identity, e.g. 'Diangle/clip4clip-webvid@1a2b3c4d5e6f' (':int8' appended off the exact class)."""
        text = f"{self.model}@{self.short_snapshot}"
        return text if self.precision == PRECISION_EXACT else f"{text}:{self.precision}"

    @property
    def legacy_key(self) -> str:
        """What collections recorded as PROP_MODEL before snapshots: model@revision, or the bare id / path."""
        return f"{self.model}@{self.revision}" if self.revision else self.model

    def same_space(self, other: ModelKey) -> bool:
        return (self.snapshot, self.precision, self.dim) == (other.snapshot, other.precision, other.dim)

    def properties(self) -> dict[str, str]:
        return {PROP_MODEL: self.model, PROP_REVISION: self.revision or "", PROP_SNAPSHOT: self.snapshot,
                PROP_PRECISION: self.precision, PROP_DIM: str(self.dim)}

    @classmethod
    def from_properties(cls, props: Mapping[str, str], dim: int) -> ModelKey | None:
        """The key a collection records; None for a collection made before snapshots were recorded."""
        snapshot = props.get(PROP_SNAPSHOT)
        if not snapshot:
            return None
        return cls(model=props.get(PROP_MODEL, ""), snapshot=snapshot,
                   precision=props.get(PROP_PRECISION) or PRECISION_EXACT, dim=dim,
                   revision=props.get(PROP_REVISION) or None)


def parse_legacy(recorded: str) -> tuple[str, str | None]:
    """(model, revision) of an old PROP_MODEL value: 'org/name@main' -> ('org/name', 'main'); a folder path
    (absolute, as the loader recorded it, and possibly containing '@') is taken whole."""
    if PurePath(recorded).is_absolute() or "@" not in recorded:
        return recorded, None
    model, _, revision = recorded.rpartition("@")
    return model, revision or None


def describe_mismatch(collection: str, stored: ModelKey, configured: ModelKey) -> str:
    """A user message: what changed between the recorded and the configured key, how to go back, how to move on."""
    changes = []
    if stored.snapshot != configured.snapshot:
        names = (f"of {configured.model}" if stored.model == configured.model
                 else f"({stored.model} -> {configured.model})")
        change = f"snapshot {stored.short_snapshot} -> {configured.short_snapshot} {names}"
        if stored.is_folder and configured.is_folder and stored.model == configured.model:
            change += " (the weight files in that folder changed)"
        elif not stored.is_folder and not configured.is_folder and stored.model == configured.model:
            if (stored.revision or "main") == (configured.revision or "main"):
                change += f" (the hub revision '{configured.revision or 'main'}' now points elsewhere)"
            else:
                change += (f" (VIDSEARCH_MODEL_REVISION was '{stored.revision or 'main'}', "
                           f"now '{configured.revision or 'main'}')")
        elif stored.is_folder != configured.is_folder:
            change += " (a hub checkpoint is known by its commit, a local folder by its content hash)"
        changes.append(change)
    if stored.precision != configured.precision:
        changes.append(f"precision {stored.precision} -> {configured.precision}")
    if stored.dim != configured.dim:
        changes.append(f"dim {stored.dim} -> {configured.dim}")
    if stored.is_folder:
        back = f"put the old weight files back in {stored.model}"
    else:
        back = f"pin VIDSEARCH_MODEL={stored.model} VIDSEARCH_MODEL_REVISION={stored.snapshot}"
    if stored.precision != configured.precision:
        back += f" and use a backend of precision {stored.precision}"
    return (
        f"the Milvus collection '{collection}' holds vectors of {stored.key}, which cannot be mixed with those of "
        f"the configured model: {'; '.join(changes)}. To keep using this index, {back}. To move the library to "
        "the configured model, run `vidsearch reindex` (every video is embedded again), or use another "
        "VIDSEARCH_COLLECTION."
    )
