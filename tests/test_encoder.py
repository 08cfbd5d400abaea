"""The CLIP4Clip encoder against direct transformers computations, through the production loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from ingest.decode import iter_sampled_frames, sample_frames
from ingest.encoder import ModelUnavailableError, load_encoder, resize_output_size
from tests.videos import write_video


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A checkpoint at another resolution: nothing may assume CLIP's 224 px or 512 dims."""
    from tests.tiny_clip import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("clip-96"), trained=False, seed=2, image_size=96)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_dimensions_and_size_come_from_the_checkpoint(random_model, wide_model):
    small = load_encoder(str(random_model), device="cpu")
    wide = load_encoder(str(wide_model), device="cpu")
    assert (small.dim, small.image_size, small.prep.crop_hw) == (24, 32, (32, 32))
    assert (wide.dim, wide.image_size, wide.prep.crop_hw) == (24, 96, (96, 96))


def test_video_vector_equals_direct_transformers_computation(random_model):
    encoder = load_encoder(str(random_model), device="cpu", batch_size=5)  # batches split across the two videos
    torch.manual_seed(0)
    videos = [torch.randn(7, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    ours = encoder.embed_videos(videos)

    clip = CLIPModel.from_pretrained(random_model).eval()  # the reference: the full model, its own projection
    with torch.no_grad():
        frame_embeds = [clip.visual_projection(clip.vision_model(pixel_values=v).pooler_output) for v in videos]
        expected = [_normalize(_normalize(f).mean(0)) for f in frame_embeds]
    assert ours.shape == (2, 24)
    np.testing.assert_allclose(ours, torch.stack(expected).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_text_vector_equals_direct_transformers_computation(random_model):
    encoder = load_encoder(str(random_model), device="cpu")
    clip = CLIPModel.from_pretrained(random_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(random_model)
    inputs = tokenizer(["a red circle"], return_tensors="pt")
    with torch.no_grad():
        expected = _normalize(clip.text_projection(clip.text_model(**inputs).pooler_output))[0].numpy()
    np.testing.assert_allclose(encoder.embed_text("a red circle"), expected, atol=1e-5)


def test_long_queries_are_truncated_not_rejected(random_model):
    encoder = load_encoder(str(random_model), device="cpu")
    vector = encoder.embed_text(" ".join(["a red circle"] * 40))
    assert vector.shape == (24,) and np.isfinite(vector).all()


@pytest.mark.parametrize("size", [(120, 200), (200, 120), (64, 64), (360, 640), (720, 400)])
def test_preprocessing_matches_clip_image_processor_on_decoded_frames(wide_model, tmp_path, size):
    """Our torch preprocessing of real decoded frames vs the reference CLIPImageProcessor path: cosine >= 0.999."""
    height, width = size
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (height // 8, width // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    frames = [np.roll(base, shift=i * 3, axis=1) for i in range(6)]
    path = write_video(tmp_path / "noise.mp4", frames=frames, fps=6, size=None)
    _, decoded = sample_frames(path, 4)
    assert decoded[0].shape[:2] == (height, width)

    encoder = load_encoder(str(wide_model), device="cpu")
    ours = encoder.embed_pixels(torch.stack([encoder.preprocess(f) for f in decoded]))
    reference = CLIPImageProcessorPil.from_pretrained(wide_model)(images=decoded, return_tensors="pt")["pixel_values"]
    theirs = encoder.embed_pixels(reference)
    cosine = (ours * theirs).sum(-1)
    assert cosine.min().item() >= 0.999, cosine

    # The fast path the worker uses: swscale resizes while converting to RGB, torch only crops and normalises.
    small = list(iter_sampled_frames(path, 4, size=encoder.decode_size(height, width)))
    assert small[0].shape[:2] == encoder.decode_size(height, width)
    if min(height, width) > 2 * 96:
        assert small[0].shape[:2] != (height, width)  # the fast path really resized
    fast = encoder.embed_pixels(torch.stack([encoder.preprocess(f) for f in small]))
    cosine = (fast * theirs).sum(-1)
    assert cosine.min().item() >= 0.999, cosine


def test_resize_rule_matches_transformers():
    assert resize_output_size(120, 200, 32) == (32, 53)
    assert resize_output_size(200, 120, 32) == (53, 32)
    assert resize_output_size(50, 50, 32) == (32, 32)


def test_missing_model_says_how_to_provide_one(tmp_path):
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder("no-such-org/no-such-clip", revision="main", device="cpu")
    message = str(err.value)
    assert "no-such-org/no-such-clip" in message
    assert "VIDSEARCH_MODEL" in message and "local folder" in message and "HF_HUB_OFFLINE" in message


def test_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="could not load the CLIP model"):
        load_encoder(str(tmp_path / "empty"), device="cpu")
