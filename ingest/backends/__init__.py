"""Inference backends for the CLIP towers (torch, ONNX Runtime, OpenVINO) behind one interface (base.Towers)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ingest.backends.base import (
    SUPPORTED,
    Choice,
    ModelUnavailableError,
    NonFiniteEmbeddingError,
    Towers,
    cpu_threads,
    installed,
    resolve,
)
from ingest.backends.export import Exported, TorchTowersForExport, ensure_exported, invalidate

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED", "Choice", "ModelUnavailableError", "NonFiniteEmbeddingError", "Towers", "cpu_threads",
           "installed", "open_towers", "resolve", "TorchTowersForExport"]


def open_towers(choice: Choice, *, model: str, snapshot: str, models_dir: Path, threads: int,
                load_torch: Callable[[], TorchTowersForExport]) -> Towers:
    """The towers of `snapshot` on the chosen backend. Exported backends read the ONNX cache (exporting once when
    it is missing, stale or damaged); `load_torch` loads the checkpoint's fp32 torch towers, only when needed."""
    if choice.backend == "torch":
        from ingest.backends.torch_towers import TorchTowers

        towers = load_torch()
        return TorchTowers(towers.vision, towers.text, choice.precision, choice.device)
    # OpenVINO compiles the fp32 export itself, at the precision its hint names.
    export_precision = "int8" if choice.precision == "int8" else "fp32"
    exported = ensure_exported(models_dir, model, snapshot, export_precision, load_torch)
    try:
        return _open_exported(choice, exported, threads)
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT and OpenVINO raise their own types for a file they cannot read
        log.warning("exported model in %s does not load (%s: %s); exporting again", exported.folder,
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        invalidate(exported)
        return _open_exported(choice, ensure_exported(models_dir, model, snapshot, export_precision, load_torch),
                              threads)


def _open_exported(choice: Choice, exported: Exported, threads: int) -> Towers:
    if choice.backend == "onnx":
        from ingest.backends.onnx_towers import OnnxTowers

        return OnnxTowers(exported, choice.precision, threads)
    from ingest.backends.openvino_towers import OpenVinoTowers

    # One compiled-model cache per precision: OpenVINO's cache key leaves out INFERENCE_PRECISION_HINT (2026.4), so a
    # bf16 compile would import an f32 blob from a shared folder and run it in bf16: NaN embeddings, seen on AMX.
    shared = exported.folder.parent / "openvino-cache"
    for stale in shared.glob("*.blob"):  # left at the top by versions that shared it: never read again
        stale.unlink(missing_ok=True)
    cache = shared / choice.precision
    return OpenVinoTowers(exported, choice.precision, threads, cache)
