"""Image queries: the image embedding against transformers itself, its meaning with the trained tiny model, and the
decoding of uploaded bytes (not an image, truncated, decompression bombs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPVisionModelWithProjection

from ingest.decode import sample_frames
from ingest.encoder import load_encoder
from search_app.search import (
    MAX_IMAGE_PIXELS,
    ImageQueryError,
    ImageTooLargeError,
    decode_base64_image,
    decode_image,
    embed_query_image,
)
from tests.conftest import CLIPS
from tests.videos import render_frame


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def random_encoder(random_model):
    return load_encoder(str(random_model), device="cpu", batch_size=2)  # 3 images: batches of 2 and 1


def test_image_vector_equals_direct_transformers_computation(random_encoder, random_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(32, 32), (48, 80), (90, 40)]]
    ours = random_encoder.embed_images(images)

    # The reference: transformers' own vision tower with its projection, on the same pixel tensor.
    config = CLIPConfig.from_pretrained(random_model)
    vision_config = config.vision_config
    vision_config.projection_dim = config.projection_dim
    reference = CLIPVisionModelWithProjection.from_pretrained(random_model, config=vision_config).eval()
    pixels = torch.stack([random_encoder.preprocess(image) for image in images])
    with torch.no_grad():
        embeds = reference(pixel_values=pixels).image_embeds
    expected = (embeds / embeds.norm(dim=-1, keepdim=True)).numpy()

    assert ours.shape == (3, 24) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    # One image alone, a PIL image, and a one-frame "video" all give the same vector.
    np.testing.assert_allclose(random_encoder.embed_image(images[1]), expected[1], atol=1e-5)
    np.testing.assert_allclose(random_encoder.embed_image(Image.fromarray(images[1])), expected[1], atol=1e-5)
    np.testing.assert_allclose(random_encoder.embed_videos([pixels[1:2]])[0], expected[1], atol=1e-5)
    # Greyscale and RGBA inputs are read as the RGB image they show.
    grey = images[0][:, :, 0]
    np.testing.assert_allclose(random_encoder.embed_image(grey),
                               random_encoder.embed_image(np.repeat(grey[:, :, None], 3, axis=2)), atol=1e-6)
    rgba = np.concatenate([images[2], np.full((90, 40, 1), 7, np.uint8)], axis=2)
    np.testing.assert_allclose(random_encoder.embed_image(rgba), expected[2], atol=1e-5)
    assert random_encoder.embed_images([]).shape == (0, 24)


def test_bad_image_arrays_are_refused(random_encoder):
    with pytest.raises(ValueError, match="uint8"):
        random_encoder.embed_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        random_encoder.embed_image(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError):
        random_encoder.embed_image("red_circle.png")


def test_decoded_bytes_give_the_vector_of_the_pixels(random_encoder):
    frame = render_frame("blue", "triangle", 64)
    direct = random_encoder.embed_image(frame)
    np.testing.assert_allclose(embed_query_image(random_encoder, png_bytes(frame)), direct, atol=1e-6)
    # A large photo is reduced before the model, as large video frames are at decode time; same picture.
    big = np.asarray(Image.fromarray(frame).resize((640, 640), Image.Resampling.NEAREST))
    assert float(embed_query_image(random_encoder, png_bytes(big)) @ direct) > 0.99


def test_still_image_finds_the_matching_video(tiny_model, clips_dir):
    """The trained tiny model, with the videos' real decoded frames: a still of a red circle is closest to the
    red-circle clip. For every clip, its still ranks it in the top two, behind at most a clip of the same colour
    (the tiny model tells colours apart far better than shapes: a green circle's still is 0.99 to the green-square
    clip and 0.95 to its own)."""
    encoder = load_encoder(str(tiny_model), device="cpu")
    names = [name for _, _, name, _ in CLIPS]
    colour_of = {name: colour for colour, _, name, _ in CLIPS}
    videos = [torch.stack([encoder.preprocess(f) for f in sample_frames(clips_dir / name, 4)[1]]) for name in names]
    matrix = encoder.embed_videos(videos)
    exact = 0
    for colour, shape, name, _ in CLIPS:
        query = embed_query_image(encoder, png_bytes(render_frame(colour, shape, 96)))
        scores = matrix @ query
        ranked = [names[i] for i in np.argsort(-scores)]
        assert name in ranked[:2] and colour_of[ranked[0]] == colour, (colour, shape, ranked)
        if colour == "red":
            assert ranked[0] == name and scores.max() - np.sort(scores)[-2] > 0.3, (ranked, scores)
        exact += ranked[0] == name
    assert exact >= len(CLIPS) - 1


def test_bytes_that_are_not_an_image_are_a_clear_error():
    with pytest.raises(ImageQueryError, match="not an image"):
        decode_image(b"this is a shopping list")
    with pytest.raises(ImageQueryError, match="empty"):
        decode_image(b"")
    truncated = png_bytes(render_frame("red", "circle", 64))[:200]
    with pytest.raises(ImageQueryError, match="could not be decoded"):
        decode_image(truncated)
    with pytest.raises(ImageQueryError, match="base64"):
        decode_base64_image("not base64 at all!")


def test_base64_forms_are_accepted():
    raw = png_bytes(render_frame("red", "circle", 16))
    import base64

    plain = base64.b64encode(raw).decode()
    assert decode_base64_image(plain) == raw
    assert decode_base64_image("data:image/png;base64," + plain) == raw
    assert decode_base64_image(base64.urlsafe_b64encode(raw).decode()) == raw
    assert decode_image(raw).size == (16, 16)


def test_decompression_bomb_is_refused_before_decoding():
    # A real 9000x9000 PNG of one colour: ~80 KB of data claiming 81 million pixels.
    bomb = png_bytes(np.zeros((9000, 9000, 3), np.uint8))
    assert len(bomb) < 1_000_000 and 9000 * 9000 > MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(bomb)


def test_cli_search_by_image(tmp_path, tiny_model, milvus_uri, clips_dir, monkeypatch):
    """`vidsearch search --image PATH`, in process on the shared Milvus Lite server."""
    import json
    import uuid

    from typer.testing import CliRunner

    from search_app.cli import UserError, app

    for name, value in {"HOME": str(tmp_path / "home"), "MODEL": str(tiny_model), "MILVUS_URI": milvus_uri,
                        "COLLECTION": f"cli_{uuid.uuid4().hex[:8]}", "FRAMES": "4", "DECODE_MODE": "thread"}.items():
        monkeypatch.setenv(f"VIDSEARCH_{name}", value)
    runner = CliRunner()
    ingested = runner.invoke(app, ["ingest", str(clips_dir / "red_circle.mp4"), str(clips_dir / "blue_square.gif"),
                                   "--wait"])
    assert ingested.exit_code == 0 and "Ingested: 2" in ingested.output, ingested.output
    still = tmp_path / "still.png"
    still.write_bytes(png_bytes(render_frame("red", "circle", 80)))
    found = runner.invoke(app, ["search", "--image", str(still), "--json"])
    assert found.exit_code == 0, found.output
    assert [r["title"] for r in json.loads(found.stdout)] == ["red_circle.mp4", "blue_square.gif"]
    table = runner.invoke(app, ["search", "--image", str(still), "-k", "1"])
    assert table.exit_code == 0 and "red_circle.mp4" in table.output and "blue_square.gif" not in table.output

    both = runner.invoke(app, ["search", "a red circle", "--image", str(still)])
    assert isinstance(both.exception, UserError) and "exactly one" in str(both.exception)
    neither = runner.invoke(app, ["search"])
    assert isinstance(neither.exception, UserError)
    note = tmp_path / "note.png"
    note.write_text("not a picture")
    refused = runner.invoke(app, ["search", "--image", str(note)])
    assert isinstance(refused.exception, ImageQueryError) and "not an image" in str(refused.exception)
    missing = runner.invoke(app, ["search", "--image", str(tmp_path / "nope.png")])
    assert isinstance(missing.exception, UserError) and "no such image file" in str(missing.exception)
