"""The CLIP towers on OpenVINO's CPU plugin, compiled from the same ONNX export as ONNX Runtime's (`.[openvino]`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ingest.backends.base import ModelUnavailableError, cpu_has_bf16
from ingest.backends.export import Exported

log = logging.getLogger(__name__)

# OpenVINO's CPU plugin defaults to bf16 on CPUs that have it, silently: the hint is always set.
HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoTowers:
    backend = "openvino"

    def __init__(self, exported: Exported, precision: str, threads: int, cache_dir: Path) -> None:
        import openvino as ov

        if precision == "bf16" and not cpu_has_bf16():
            raise ModelUnavailableError(
                "VIDSEARCH_PRECISION=bf16 on OpenVINO needs a CPU with native bf16 (AVX512-BF16 or AMX); this one "
                "has neither, and OpenVINO would quietly run fp32 instead. Use fp32, or int8 on onnx.")
        self.precision = precision
        self.threads = threads
        self.files = exported
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": threads,
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(cache_dir)}
        self.vision = core.compile_model(core.read_model(str(exported.vision)), "CPU", config)
        self.text = core.compile_model(core.read_model(str(exported.text)), "CPU", config)

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        return _infer(self.vision, np.ascontiguousarray(pixels.detach().to(torch.float32).cpu().numpy()))

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _infer(self.text, np.ascontiguousarray(input_ids.cpu().numpy().astype(np.int64)))


def _infer(compiled, array: np.ndarray) -> torch.Tensor:
    # A request per call: a compiled model's own shortcut reuses one request, which two threads (the web app runs
    # two model calls at once) must not share.
    request = compiled.create_infer_request()
    request.infer({0: array})
    return torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))
