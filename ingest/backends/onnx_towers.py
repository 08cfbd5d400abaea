"""The CLIP towers on ONNX Runtime's CPU provider (fp32, or int8 with dynamically quantized weights)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ingest.backends.export import Exported

log = logging.getLogger(__name__)


def session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # All cores for one call, operators one at a time: the pipeline runs one model call at a time, and the decode
    # workers and the experts' own sessions need the rest of the machine between calls.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No spinning between calls: an idle web app, or a worker waiting for its decoders, would otherwise keep
    # every core busy and slow the decoders and experts sharing them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initializers etc. say nothing to a user
    return options


class OnnxTowers:
    """Two ONNX Runtime sessions; their inputs and outputs are those of export.py's graphs."""

    backend = "onnx"

    def __init__(self, exported: Exported, precision: str, threads: int) -> None:
        import onnxruntime as ort

        options = session_options(threads)
        self.precision = precision
        self.threads = threads
        self.files = exported
        # Creating a session parses and checks the whole file: a damaged one fails here, not at the first frame.
        self.vision = ort.InferenceSession(str(exported.vision), options, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(exported.text), options, providers=["CPUExecutionProvider"])

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().to(torch.float32).cpu().numpy())
        return torch.from_numpy(self.vision.run(None, {"pixel_values": array})[0])

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = np.ascontiguousarray(input_ids.cpu().numpy().astype(np.int64))
        return torch.from_numpy(self.text.run(None, {"input_ids": ids})[0])
