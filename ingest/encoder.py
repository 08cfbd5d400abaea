"""CLIP4Clip encoder: frames -> video vector, text -> query vector. The one module that imports torch/transformers."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ingest.backends import (
    Choice,
    ModelUnavailableError,
    NonFiniteEmbeddingError,
    TorchTowersForExport,
    Towers,
    cpu_threads,
    open_towers,
    resolve,
)
from ingest.checkpoint import cached_hub_snapshot, folder_snapshot, hub_revision
from schema.model_key import ModelKey

__all__ = ["ClipEncoder", "ModelUnavailableError", "Preprocessing", "load_encoder"]

log = logging.getLogger(__name__)

# Used only when a checkpoint ships no preprocessor_config.json (CLIP4Clip exports often don't):
# the OpenAI CLIP normalisation every CLIP checkpoint was trained with.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocessing:
    """CLIP image preprocessing, read from the checkpoint: resize, centre crop, scale, normalise."""

    shortest_edge: int | None  # resize so the short side has this length (aspect kept) ...
    resize_hw: tuple[int, int] | None  # ... or to exactly this size
    crop_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def resize_output_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Same rule as transformers' get_resize_output_image_size: short side = edge, long side truncated."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def preprocess_frame(frame: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float32 normalised tensor, with torch ops only (no PIL round trip)."""
    return normalize_pixels(resize_crop_frame(frame, prep), prep)


def resize_crop_frame(frame: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW uint8 at the model's input size: the geometric half of the preprocessing.

    Exact in uint8 (the resize rounds to integers as PIL does), and 4x smaller than float32: decoders hand these
    over and the model side normalises one batch at a time, so a long video's samples never sit in memory as floats.
    """
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
    height, width = frame.shape[:2]
    if prep.shortest_edge is not None:
        size = resize_output_size(height, width, prep.shortest_edge)
    else:
        assert prep.resize_hw is not None
        size = prep.resize_hw
    if size != (height, width):
        # antialias=True makes downscaling match PIL's bicubic filter closely.
        resized = F.interpolate(image.unsqueeze(0).float(), size=size, mode="bicubic", align_corners=False,
                                antialias=True)
        image = resized[0].clamp_(0, 255).round_().to(torch.uint8)  # PIL works in uint8: vectors stay aligned
    return center_crop(image, prep.crop_hw)


def normalize_pixels(pixels: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 (...,3,H,W) from resize_crop_frame -> float32 scaled and normalised with the checkpoint's mean/std."""
    mean = torch.tensor(prep.mean).view(3, 1, 1) * 255.0
    std = torch.tensor(prep.std).view(3, 1, 1) * 255.0
    return (pixels.float() - mean) / std


def decode_size_for(prep: Preprocessing, height: int, width: int) -> tuple[int, int]:
    """(height, width) to decode frames of this size at: twice the model's input, or as they are if smaller.

    swscale does the bulk of the downscale while converting to RGB (cheap), torch's antialiased bicubic the
    last 2x. Going straight to the final size in swscale loses agreement with CLIPImageProcessor (cosine
    0.993 on 1080p noise); the 2x step keeps it >= 0.999 at a fraction of the full-resolution cost.
    """
    if prep.shortest_edge is not None:
        target_h, target_w = resize_output_size(height, width, prep.shortest_edge)
    else:
        assert prep.resize_hw is not None
        target_h, target_w = prep.resize_hw
    if height <= 2 * target_h or width <= 2 * target_w:
        return height, width
    return resize_output_size(height, width, 2 * min(target_h, target_w)) if prep.shortest_edge else (
        2 * target_h, 2 * target_w)


def center_crop(image: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
    """Centre crop a CxHxW tensor, zero-padding first when it is smaller than the crop (as transformers does)."""
    crop_h, crop_w = crop_hw
    _, height, width = image.shape
    if height < crop_h or width < crop_w:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        image = F.pad(image, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        _, height, width = image.shape
    top = int((height - crop_h) / 2.0)
    left = int((width - crop_w) / 2.0)
    return image[:, top : top + crop_h, left : left + crop_w]


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(f"VIDSEARCH_DEVICE={device} but no CUDA device is available; use cpu or auto")
    return torch.device(device)


class ClipEncoder:
    """CLIP text and vision towers with projection, on one backend (ingest/backends); vectors are L2-normalised
    float32 numpy arrays."""

    def __init__(self, towers: Towers, tokenizer, prep: Preprocessing, *, dim: int, image_size: int,
                 max_text_length: int, model_id: str, revision: str | None, snapshot: str, choice: Choice,
                 batch_size: int = 48, cache_dir: Path | None = None, query_cache_size: int = 256) -> None:
        self.towers = towers
        self.tokenizer = tokenizer
        self.prep = prep
        self.model_id = model_id
        self.revision = revision
        self.snapshot = snapshot  # hub commit, or a folder's content hash (ingest/checkpoint.py)
        self.cache_dir = cache_dir  # the Hugging Face cache it was loaded from (None: the default one)
        self.choice = choice
        self.device = choice.device
        self.batch_size = batch_size
        self.dim = dim
        self.image_size = image_size
        self.max_text_length = max_text_length
        self.query_cache_size = query_cache_size
        self._queries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()

    @property
    def model_key(self) -> ModelKey:
        """Identifies the vector space: the vector store refuses to mix vectors of another snapshot or precision."""
        return ModelKey(model=self.model_id, snapshot=self.snapshot, precision=self.choice.precision_class,
                        dim=self.dim, revision=self.revision)

    @property
    def key(self) -> str:
        """The model key as printable text, e.g. 'org/name@1a2b3c4d5e6f'."""
        return self.model_key.key

    @property
    def runtime(self) -> str:
        """What runs the model, e.g. 'onnx fp32 on cpu'."""
        return f"{self.choice.label} on {self.device}"

    def legacy_snapshot(self, model: str, revision: str | None) -> str | None:
        """The snapshot that a collection recording only `model`[@`revision`] (vidsearch before snapshots) names
        now: this checkpoint's own when it is the one loaded, else the commit the revision has in the local Hugging
        Face cache. None for another folder: its files may have changed since, and nothing says which they were."""
        if model == self.model_id and revision == self.revision:
            return self.snapshot
        if Path(model).is_absolute():
            return None
        if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
            return revision
        return cached_hub_snapshot(model, revision, self.cache_dir)

    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        return preprocess_frame(frame, self.prep)

    def decode_size(self, height: int, width: int) -> tuple[int, int]:
        return decode_size_for(self.prep, height, width)

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) preprocessed pixels -> (N,dim) L2-normalised image embeddings (float32, on CPU).

        uint8 pixels (resize_crop_frame's) are normalised here, one batch at a time."""
        out: list[torch.Tensor] = []
        for start in range(0, len(pixel_values), self.batch_size):
            chunk = pixel_values[start : start + self.batch_size]
            if chunk.dtype == torch.uint8:
                chunk = normalize_pixels(chunk, self.prep)
            out.append(l2_normalize(self._finite(self.towers.image_embeds(chunk).float(), "images")))
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def _finite(self, embeds: torch.Tensor, what: str) -> torch.Tensor:
        """`embeds` if every value is finite. A NaN row would normalise to NaN and poison a search (every distance to
        it is NaN), so a backend that produces one fails loudly instead."""
        if bool(torch.isfinite(embeds).all()):
            return embeds
        bad = int((~torch.isfinite(embeds)).any(dim=-1).sum())
        raise NonFiniteEmbeddingError(
            f"{self.choice.label} returned NaN or infinite embeddings for {bad} of {len(embeds)} {what}; nothing was "
            "stored. Try VIDSEARCH_PRECISION=fp32, or VIDSEARCH_INFERENCE=torch.")

    def embed_videos(self, videos: Sequence[torch.Tensor]) -> np.ndarray:
        """CLIP4Clip mean-pooling: per video (n_i,3,H,W) frames -> normalised mean of normalised frame embeds.

        Frames of all videos go through the model together so batches stay full across short clips.
        """
        if not videos:
            return np.empty((0, self.dim), dtype=np.float32)
        frame_embeds = self.embed_pixels(torch.cat(list(videos)))
        vectors, start = [], 0
        for frames in videos:
            vectors.append(l2_normalize(frame_embeds[start : start + len(frames)].mean(dim=0)))
            start += len(frames)
        return torch.stack(vectors).numpy().astype(np.float32)

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_length,
                                return_tensors="pt")
        embeds = self.towers.text_embeds(inputs["input_ids"], inputs["attention_mask"])
        return l2_normalize(self._finite(embeds.float(), "queries")).cpu().numpy().astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Queries -> (N,dim) L2-normalised text embeddings; long queries are truncated to the model's limit.

        Recent queries are answered from a small LRU cache (VIDSEARCH_QUERY_CACHE_SIZE), keyed by model key and
        text: a query typed again, or asked by page and API alike, skips the text tower."""
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        key = self.key
        found: dict[str, np.ndarray] = {}
        with self._queries_lock:
            for text in texts:
                hit = self._queries.get((key, text))
                if hit is not None:
                    self._queries.move_to_end((key, text))
                    found[text] = hit
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            for text, vector in zip(missing, self._encode_texts(missing), strict=True):
                found[text] = vector
            if self.query_cache_size:
                with self._queries_lock:
                    for text in missing:
                        self._queries[(key, text)] = found[text]
                    while len(self._queries) > self.query_cache_size:
                        self._queries.popitem(last=False)
        return np.stack([found[t] for t in texts]).copy()

    def clear_query_cache(self) -> None:
        with self._queries_lock:
            self._queries.clear()

    def embed_text(self, text: str) -> np.ndarray:
        return self.embed_texts([text])[0]

    def embed_images(self, images: Sequence) -> np.ndarray:
        """Still images (HxWx3 uint8 RGB arrays or PIL images) -> (N,dim) L2-normalised image embeddings.

        The same preprocessing and vision tower as video frames, so an image and a video live in one space: a
        one-frame video's vector equals its image's vector. Greyscale (HxW) and RGBA arrays are accepted too.
        """
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        pixels = torch.stack([self.preprocess(as_rgb_array(image)) for image in images])
        return self.embed_pixels(pixels).numpy().astype(np.float32)

    def embed_image(self, image) -> np.ndarray:
        return self.embed_images([image])[0]


def as_rgb_array(image) -> np.ndarray:
    """A PIL image or an HxW / HxWx1 / HxWx3 / HxWx4 uint8 array -> HxWx3 uint8 RGB array (alpha dropped)."""
    if not isinstance(image, np.ndarray):
        convert = getattr(image, "convert", None)
        if convert is None:
            raise TypeError(f"expected an HxWx3 uint8 array or a PIL image, got {type(image).__name__}")
        image = np.array(convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays
    if image.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an HxWx3 image array, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def _is_local(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def load_preprocessing(source: str, revision: str | None, image_size: int, cache_dir: Path | None = None
                       ) -> Preprocessing:
    """Read size/crop/mean/std from the checkpoint's image processor config; fall back to CLIP's defaults."""
    from transformers import CLIPImageProcessorPil

    try:
        proc = CLIPImageProcessorPil.from_pretrained(source, revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        log.info("no image processor config in %s (%s); using CLIP defaults at %d px", source, exc, image_size)
        return Preprocessing(image_size, None, (image_size, image_size), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    size, crop = dict(proc.size), dict(proc.crop_size or {})
    shortest = size.get("shortest_edge")
    resize_hw = None if shortest else (int(size["height"]), int(size["width"]))
    crop_hw = (int(crop["height"]), int(crop["width"])) if crop and proc.do_center_crop else (
        resize_hw or (int(shortest), int(shortest)))
    return Preprocessing(
        shortest_edge=int(shortest) if shortest else None,
        resize_hw=resize_hw,
        crop_hw=crop_hw,
        mean=tuple(float(x) for x in proc.image_mean),  # type: ignore[arg-type]
        std=tuple(float(x) for x in proc.image_std),  # type: ignore[arg-type]
    )


def _tower_configs(source: str, revision: str | None, cache_dir: Path | None = None):
    """Vision and text configs of a checkpoint, with the projection size taken from the checkpoint itself.

    A full CLIPConfig keeps `projection_dim` at the top level; the tower configs carry their own field with a
    512 default, which is wrong for any checkpoint of another size, so the top-level value is copied down.
    """
    from transformers import AutoConfig, CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    config = AutoConfig.from_pretrained(source, revision=revision, cache_dir=cache_dir)
    if isinstance(config, CLIPConfig):
        vision, text = config.vision_config, config.text_config
        vision.projection_dim = text.projection_dim = config.projection_dim
        return vision, text
    if isinstance(config, (CLIPVisionConfig, CLIPTextConfig)):
        raise ValueError(f"{source} holds only one CLIP tower ({type(config).__name__}); both are needed")
    raise ValueError(f"{source} is not a CLIP checkpoint (model type {config.model_type!r})")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter every CLI call
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _unavailable(model: str, revision: str | None, local: bool, exc: Exception) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    asked = None if local else revision
    return ModelUnavailableError(
        f"could not load the CLIP model {model!r}"
        + (f" at revision {asked!r}" if asked else "")
        + f": {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        "Provide a model in one of two ways:\n"
        "  - allow access to the Hugging Face Hub (network access"
        + (", and unset HF_HUB_OFFLINE" if offline else "")
        + ") so the checkpoint can be downloaded once into the cache, or\n"
        "  - set VIDSEARCH_MODEL to a local folder holding a CLIP checkpoint "
        "(config.json, model weights, tokenizer files). For an offline machine, download it once where the hub "
        f"is reachable (hf download {model if not local else 'Diangle/clip4clip-webvid'} --local-dir DIR), "
        "copy DIR over and set VIDSEARCH_MODEL=DIR."
    )


def default_models_dir() -> Path:
    """Where exported models go when no data folder is given (the CLI and web app always give theirs)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidsearch" / "models"


def load_encoder(model: str, revision: str | None = None, device: str = "auto", batch_size: int = 48, *,
                 hash_cache: Path | None = None, cache_dir: Path | None = None, inference: str = "auto",
                 precision: str = "auto", models_dir: Path | None = None, threads: int = 0,
                 query_cache_size: int = 256) -> ClipEncoder:
    """Load the text and vision towers from a hub id (at a revision) or a local folder, and tell its snapshot.

    A hub revision is resolved to its commit once, and every file is loaded at that commit: the snapshot the
    encoder reports is the one whose weights it holds. A folder's snapshot is the content hash of its weights
    (`hash_cache`: the JSON file that remembers those hashes, e.g. Settings.checkpoint_hashes_file). `cache_dir`:
    the Hugging Face cache (None: the default, HF_HUB_CACHE / HF_HOME). `inference` / `precision`: the backend
    (ingest/backends; auto: ONNX Runtime fp32 on a CPU, torch fp16 on CUDA), whose exports go to `models_dir`.
    The torch weights are read only for the torch backend or to export.
    """
    from huggingface_hub.errors import RevisionResolutionError
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    local = _is_local(model)
    source = str(Path(model).expanduser().resolve()) if local else model
    choice = resolve(inference, precision, pick_device(device))
    hub_dir = None if local else cache_dir
    try:
        rev = None if local else hub_revision(model, revision, hub_dir)
        vision_config, text_config = _tower_configs(source, rev, hub_dir)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=rev, cache_dir=hub_dir)
        snapshot = folder_snapshot(Path(source), hash_cache) if local else rev.resolved
        prep = load_preprocessing(source, rev, int(vision_config.image_size), hub_dir)
    except (OSError, ValueError, RevisionResolutionError) as exc:
        raise _unavailable(model, revision, local, exc) from exc
    tokenizer.padding_side = "right"  # the exported text graph pools at the end-of-text token, padding after it
    max_text = int(min(text_config.max_position_embeddings, tokenizer.model_max_length))

    def load_torch() -> TorchTowersForExport:
        try:
            with _quiet_transformers():  # loading one tower from a full CLIP checkpoint lists the other's weights
                vision = CLIPVisionModelWithProjection.from_pretrained(source, revision=rev, config=vision_config,
                                                                       cache_dir=hub_dir, dtype=torch.float32)
                text = CLIPTextModelWithProjection.from_pretrained(source, revision=rev, config=text_config,
                                                                   cache_dir=hub_dir, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise _unavailable(model, revision, local, exc) from exc
        example = tokenizer(["a video", "a dog catching a frisbee"], padding=True, truncation=True,
                            max_length=max_text, return_tensors="pt")["input_ids"]
        return TorchTowersForExport(vision.eval(), text.eval(), prep.crop_hw, example,
                                    int(text_config.max_position_embeddings))

    towers = open_towers(choice, model=source, snapshot=snapshot, models_dir=models_dir or default_models_dir(),
                         threads=cpu_threads(threads), load_torch=load_torch)
    log.info("loaded %s (snapshot %s, dim %d, %d px) with %s on %s", source, snapshot, vision_config.projection_dim,
             vision_config.image_size, choice.label, choice.device)
    return ClipEncoder(towers, tokenizer, prep, dim=int(vision_config.projection_dim),
                       image_size=int(vision_config.image_size), max_text_length=max_text, model_id=source,
                       revision=None if local else revision, snapshot=snapshot, choice=choice, batch_size=batch_size,
                       cache_dir=hub_dir, query_cache_size=query_cache_size)
