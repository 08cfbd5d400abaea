"""What every inference backend offers the encoder, and which backend and precision run on which device.

The preference order of `auto` is fixed, taken from `vidsearch bench` on the machines we measured (README,
Inference backends), so a start never flips between two near-equal backends.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Protocol

import torch

from schema.model_key import PRECISION_BF16, PRECISION_EXACT, PRECISION_INT8

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# (backend, device type) -> the precisions it runs, its default first.
SUPPORTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "cpu"): ("fp32", "bf16"),
    ("torch", "cuda"): ("fp16", "fp32", "bf16"),
    ("onnx", "cpu"): ("fp32", "int8"),
    ("openvino", "cpu"): ("fp32", "bf16"),
}

# What `auto` picks for a precision, best first (bench on a 2-core AMD EPYC, ViT-B/32, images/s: torch fp32 20,
# ONNX Runtime fp32 42, OpenVINO fp32 44, torch bf16 61, OpenVINO bf16 85, ONNX Runtime int8 115). OpenVINO is an
# extra; ONNX Runtime ships with every install, so it leads for fp32.
PREFERENCE: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "fp32"): ("onnx", "openvino", "torch"),
    ("cpu", "bf16"): ("openvino", "torch"),
    ("cpu", "int8"): ("onnx",),
    ("cuda", "fp16"): ("torch",),
    ("cuda", "fp32"): ("torch",),
    ("cuda", "bf16"): ("torch",),
}

INSTALL_HINT = {"onnx": "pip install onnxruntime onnx onnxscript", "openvino": 'pip install -e ".[openvino]"'}


class ModelUnavailableError(RuntimeError):
    """The configured checkpoint, backend or precision could not be loaded."""


class NonFiniteEmbeddingError(ModelUnavailableError):
    """A backend returned NaN or infinite embeddings: they are never normalised, stored or searched with."""


class Towers(Protocol):
    """The CLIP vision and text towers with their projections, as one backend runs them."""

    backend: str
    precision: str  # fp32 | fp16 | bf16 | int8

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) normalised float32 pixels -> (N,dim) float32 projected embeddings (not yet L2-normalised)."""
        ...

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N,L) token ids, right-padded -> (N,dim) float32 projected embeddings (not yet L2-normalised)."""
        ...


@dataclass(frozen=True)
class Choice:
    """A backend and precision that run on `device`."""

    backend: str
    precision: str
    device: torch.device

    @property
    def precision_class(self) -> str:
        """The model key's precision class (schema/model_key.py): fp32 anywhere and torch fp16 on CUDA (today's GPU
        default, so a GPU worker shares its library with a CPU web app) are exact; bf16 and int8 are classes of
        their own."""
        if self.precision == "fp32" or (self.precision == "fp16" and self.device.type == "cuda"):
            return PRECISION_EXACT
        return {"bf16": PRECISION_BF16, "int8": PRECISION_INT8}[self.precision]

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


def installed(backend: str) -> bool:
    if backend == "torch":
        return True
    if backend == "onnx":
        return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))
    return importlib.util.find_spec("openvino") is not None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = next((line for line in open("/proc/cpuinfo", encoding="ascii", errors="replace")
                      if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def supported_table() -> str:
    """One line per backend and device: the precisions it runs, its default first (for error messages)."""
    return "; ".join(f"{b} on {d}: {', '.join(p)}" for (b, d), p in SUPPORTED.items())


def resolve(inference: str, precision: str, device: torch.device) -> Choice:
    """The backend and precision to run, from VIDSEARCH_INFERENCE / VIDSEARCH_PRECISION; a clear error for a
    combination that does not run on this device or is not installed."""
    kind = device.type
    if inference == "auto":
        wanted = precision if precision != "auto" else ("fp16" if kind == "cuda" else "fp32")
        options = PREFERENCE.get((kind, wanted), ())
        for backend in options:
            if installed(backend):
                return Choice(backend, wanted, device)
        if options:
            raise ModelUnavailableError(
                f"VIDSEARCH_PRECISION={wanted} on {kind} needs {' or '.join(options)}, and none is installed "
                f"({'; '.join(INSTALL_HINT[b] for b in options if b in INSTALL_HINT)})")
        raise ModelUnavailableError(
            f"VIDSEARCH_PRECISION={wanted} is not offered on {kind}. What runs: {supported_table()}")
    if inference not in BACKENDS:
        raise ModelUnavailableError(f"VIDSEARCH_INFERENCE must be auto, {', '.join(BACKENDS)}; got {inference!r}")
    offered = SUPPORTED.get((inference, kind))
    if offered is None:
        raise ModelUnavailableError(
            f"VIDSEARCH_INFERENCE={inference} does not run on {kind} here; use VIDSEARCH_INFERENCE=auto or torch "
            f"(what runs: {supported_table()})")
    wanted = offered[0] if precision == "auto" else precision
    if wanted not in offered:
        raise ModelUnavailableError(
            f"VIDSEARCH_INFERENCE={inference} does not run {wanted} on {kind}; it runs {', '.join(offered)} "
            f"(what runs: {supported_table()})")
    if not installed(inference):
        raise ModelUnavailableError(f"VIDSEARCH_INFERENCE={inference} is not installed: {INSTALL_HINT[inference]}")
    return Choice(inference, wanted, device)


def cpu_threads(configured: int) -> int:
    """Intra-op threads for ONNX Runtime / OpenVINO: as configured, or one per core this process may use."""
    if configured > 0:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
