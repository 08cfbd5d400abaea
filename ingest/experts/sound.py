"""The audio expert: what is heard but not said (applause, a siren, a dog barking, music), as CLAP embeddings of
short windows of the soundtrack, matched at query time against CLAP's embedding of the query's text (MDMMT's and
Collaborative Experts' audio expert, with a text-audio model instead of a classifier).

Any Hugging Face CLAP checkpoint (`ClapModel`: the LAION ones) or a local folder, pinned like the CLIP checkpoint:
a hub revision is resolved to its commit once and every file loaded at that commit; the snapshot is recorded on the
audio collection, so vectors of two checkpoints are never mixed.

The track is read at 48 kHz (CLAP's rate) and cut into windows of `window_seconds`, half-overlapping, the last one
ending at the end of the track; a window quieter than SILENCE_RMS is skipped. The feature extractor is asked for
`truncation="rand_trunc"` and `padding="repeatpad"`: its default, "fusion", builds four-channel features that only
a fused checkpoint reads (an unfused one crashes on them), and a window never exceeds the extractor's `max_length_s`,
so nothing is ever truncated at random.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingest.audio import Audio
from ingest.experts.base import AudioInput, Expert, ExpertUnavailable, VectorSegment

if TYPE_CHECKING:
    import torch

    from schema.settings import Settings

log = logging.getLogger(__name__)

RATE = 48_000  # CLAP's feature extractor is built for 48 kHz
SILENCE_RMS = 10 ** (-50 / 20)  # a window below -50 dBFS RMS holds nothing to hear
BATCH = 8  # windows per forward pass (a 10 s window is a 1001 x 64 spectrogram: memory stays small)


class AudioModelUnavailable(RuntimeError):
    """The CLAP checkpoint could not be loaded; the message says how to provide it."""


@dataclass(frozen=True)
class ClapEmbedder:
    """A loaded CLAP checkpoint: audio windows and texts into one normalised space of `dim` dimensions."""

    model: object  # transformers ClapModel
    features: object  # ClapFeatureExtractor
    tokenizer: object
    device: torch.device
    dim: int
    snapshot: str
    source: str
    max_seconds: float  # the longest audio the feature extractor takes without truncating

    @property
    def model_key(self) -> str:
        """What decides the vectors, as the audio collection records it."""
        return f"clap:{self.snapshot}:{self.dim}"

    def embed_audio(self, windows: list[np.ndarray]) -> np.ndarray:
        """(n, dim) float32, L2-normalised: one vector per window of RATE Hz mono samples."""
        import torch

        out = []
        for start in range(0, len(windows), BATCH):
            batch = windows[start : start + BATCH]
            inputs = self.features(batch, sampling_rate=RATE, return_tensors="pt", truncation="rand_trunc",
                                   padding="repeatpad")
            with torch.inference_mode():
                vec = self.model.get_audio_features(input_features=inputs["input_features"].to(self.device),
                                                    is_longer=inputs.get("is_longer")).pooler_output
            out.append(vec.float().cpu().numpy())
        return _normalise(np.concatenate(out) if out else np.zeros((0, self.dim), np.float32))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        import torch

        inputs = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            vec = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                               attention_mask=inputs["attention_mask"].to(self.device)).pooler_output
        return _normalise(vec.float().cpu().numpy())


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _unavailable(model: str, revision: str | None, local: bool, exc: Exception) -> AudioModelUnavailable:
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return AudioModelUnavailable(
        f"could not load the CLAP model {model!r}" + (f" at revision {revision!r}" if revision and not local else "")
        + f": {exc.__class__.__name__}: {detail}. Allow access to the Hugging Face Hub once (the checkpoint is then "
        "cached), or set VIDSEARCH_AUDIO_MODEL to a local folder holding a CLAP checkpoint (hf download "
        f"{'laion/clap-htsat-unfused' if local else model} --local-dir DIR where the hub is reachable, then copy DIR "
        "over)."
    )


def load_clap(model: str, revision: str | None = None, device: str = "auto", *, hash_cache: Path | None = None,
              cache_dir: Path | None = None) -> ClapEmbedder:
    """Load a CLAP checkpoint (hub id at a revision, or a local folder) in fp32 (fp16 on CUDA)."""
    import torch
    from huggingface_hub.errors import RevisionResolutionError
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    from ingest.checkpoint import folder_snapshot, hub_revision
    from ingest.encoder import _is_local, pick_device

    local = _is_local(model)
    source = str(Path(model).expanduser().resolve()) if local else model
    hub_dir = None if local else cache_dir
    target = pick_device(device)
    try:
        rev = None if local else hub_revision(model, revision, hub_dir)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        clap = ClapModel.from_pretrained(source, revision=rev, cache_dir=hub_dir, dtype=dtype).eval().to(target)
        features = ClapFeatureExtractor.from_pretrained(source, revision=rev, cache_dir=hub_dir)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=rev, cache_dir=hub_dir)
        snapshot = folder_snapshot(Path(source), hash_cache) if local else rev.resolved
    except (OSError, ValueError, RevisionResolutionError) as exc:
        raise _unavailable(model, revision, local, exc) from exc
    if int(features.sampling_rate) != RATE:
        raise AudioModelUnavailable(f"{model}: its feature extractor reads {features.sampling_rate} Hz audio; "
                                    f"the audio expert needs a CLAP checkpoint at {RATE} Hz")
    if getattr(clap.config.audio_config, "enable_fusion", False):
        log.info("%s is a fused CLAP checkpoint; windows are embedded unfused (rand_trunc, never truncated)", model)
    dim = int(clap.config.projection_dim)
    log.info("loaded CLAP %s (snapshot %s, dim %d) on %s", source, snapshot, dim, target)
    return ClapEmbedder(clap, features, tokenizer, target, dim, snapshot, source, float(features.max_length_s))


def windows(samples: np.ndarray, rate: int, seconds: float) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of `seconds`, half-overlapping; the last ends at the end of the track. A track
    shorter than one window is one window."""
    n = len(samples)
    size = max(1, int(round(seconds * rate)))
    if n <= size:
        return [(0, n)] if n else []
    hop = max(1, size // 2)
    starts = list(range(0, n - size + 1, hop))
    if starts[-1] + size < n:
        starts.append(n - size)
    return [(s, s + size) for s in starts]


def audible(samples: np.ndarray) -> bool:
    """Whether a window holds anything to hear (RMS above SILENCE_RMS)."""
    return len(samples) > 0 and float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) >= SILENCE_RMS


class AudioExpert(Expert):
    """What is heard: a CLAP vector per window of the soundtrack."""

    name = "audio"
    depends_on = ("transformers", "torch")

    def __init__(self, model: str = "laion/clap-htsat-unfused", revision: str | None = "main",
                 window_seconds: float = 5.0, device: str = "auto", hash_cache: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.revision = revision
        self.window_seconds = window_seconds
        self.device = device
        self.hash_cache = hash_cache
        self._clap: ClapEmbedder | None = None
        self._missing: str | None = None  # why CLAP could not be loaded, once known

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioExpert:
        return cls(settings.audio_model, settings.audio_model_revision, settings.audio_window_seconds,
                   settings.device, str(settings.checkpoint_hashes_file))

    @property
    def needs(self) -> AudioInput:
        return AudioInput(rate=RATE)

    @property
    def model_key(self) -> str | None:
        """The loaded checkpoint's key (None before load)."""
        return self._clap.model_key if self._clap is not None else None

    def load(self) -> None:
        """Load CLAP. A checkpoint that cannot be had here (offline, never downloaded) makes every video record the
        expert unavailable with the way to provide one, tried once per process, never a failure per video."""
        if self._missing is not None:
            raise ExpertUnavailable(self._missing)
        try:
            self._clap = load_clap(self.model, self.revision, self.device,
                                   hash_cache=Path(self.hash_cache) if self.hash_cache else None)
        except AudioModelUnavailable as exc:
            self._missing = f"no CLAP checkpoint is available here: {exc}"
            log.warning("the audio expert is unavailable: %s", exc)
            raise ExpertUnavailable(self._missing) from exc

    def transcribe(self, data: Audio) -> list[VectorSegment]:
        if data.rate != RATE:
            raise ValueError(f"the audio expert reads {RATE} Hz audio, got {data.rate} Hz")
        if self._clap is None:
            self.load()
        began = time.process_time()
        seconds = min(self.window_seconds, self._clap.max_seconds)
        spans = [(a, b) for a, b in windows(data.samples, data.rate, seconds) if audible(data.samples[a:b])]
        if not spans:
            raise ExpertUnavailable("the audio track is silent")
        vectors = self._clap.embed_audio([data.samples[a:b] for a, b in spans])
        log.info("audio: %d windows of %.1f s (of %.0f s) in %.1f s CPU", len(spans), seconds, data.duration,
                 time.process_time() - began)
        return [VectorSegment(round(a / data.rate, 3), round(b / data.rate, 3), vec)
                for (a, b), vec in zip(spans, vectors, strict=True)]
