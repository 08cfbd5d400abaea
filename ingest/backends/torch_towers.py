"""The CLIP towers in eager PyTorch: the reference every other backend is compared with, and the CUDA path."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchTowers:
    backend = "torch"

    def __init__(self, vision: torch.nn.Module, text: torch.nn.Module, precision: str, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        # bf16 on a CPU runs under autocast (weights stay fp32, matmuls in bf16: 3x on CPUs with AVX512-BF16);
        # on CUDA the weights themselves are cast, as fp16 always was.
        self.autocast = precision == "bf16" and device.type == "cpu"
        self.dtype = torch.float32 if self.autocast else DTYPES[precision]
        self.vision = vision.to(device, self.dtype).eval()
        self.text = text.to(device, self.dtype).eval()

    def _context(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    @torch.inference_mode()
    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._context():
            out = self.vision(pixel_values=pixels.to(self.device, self.dtype, non_blocking=True)).image_embeds
        return out.float().cpu()

    @torch.inference_mode()
    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self._context():
            out = self.text(input_ids=input_ids.to(self.device),
                            attention_mask=attention_mask.to(self.device)).text_embeds
        return out.float().cpu()
