"""Build a tiny CLIP checkpoint on disk (config + weights + BPE vocab + image processor), optionally trained: for the
tests (tests/tiny_clip.py re-exports it) and `vidsearch evaluate`.

It is saved with save_pretrained and loaded back through the production loader, exactly like a hub id.
Training on synthetic "colour x shape" frames makes ranking testable: "a red circle" must find the red circle.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ingest.encoder import Preprocessing, preprocess_frame
from search_app.eval_corpus import COLOURS, SHAPES, render_frame

WORDS = ("a", "an", "the", "video", "of", "dog", "cat", *COLOURS, *SHAPES)
IMAGE_SIZE = 32
PROJECTION_DIM = 24  # deliberately not 512: nothing may assume CLIP's real dimension
MAX_TEXT = 16


def build_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE over all bytes, plus merges so each known word is a single token."""
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        current = word[0]
        for i, ch in enumerate(word[1:]):
            nxt = ch + ("</w>" if i == len(word) - 2 else "")
            merges.append((current, nxt))
            current += nxt
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # highest id: CLIP pools the text at the argmax id
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = MAX_TEXT
    return tokenizer


def build_model(tokenizer: CLIPTokenizer, seed: int = 0, image_size: int = IMAGE_SIZE) -> CLIPModel:
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=MAX_TEXT,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=image_size, patch_size=image_size // 4, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4,
        ),
        projection_dim=PROJECTION_DIM,
    )
    return CLIPModel(config)


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def train(model: CLIPModel, tokenizer: CLIPTokenizer, prep: Preprocessing, steps: int = 800, seed: int = 0,
          groups: int = 4) -> float:
    """Contrastive training on rendered frames; returns the final top-1 text->image accuracy."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pairs = list(itertools.product(COLOURS, SHAPES))
    texts = tokenizer([caption(c, s) for c, s in pairs], padding=True, return_tensors="pt")
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        # Several independent groups per step: each group holds every caption once, so no in-batch negative
        # shares its positive's caption; averaging groups gives a larger, steadier batch.
        loss = torch.zeros(())
        correct = 0.0
        for _ in range(groups):
            pixels = torch.stack([
                preprocess_frame(render_frame(c, s, size=64, jitter=rng.randrange(10_000)), prep) for c, s in pairs
            ])
            out = model(input_ids=texts["input_ids"], attention_mask=texts["attention_mask"],
                        pixel_values=pixels, return_loss=True)
            loss = loss + out.loss / groups
            correct += float((out.logits_per_text.argmax(dim=1) == torch.arange(len(pairs))).float().mean())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        accuracy = correct / groups
        if accuracy == 1.0 and step >= 100:
            break
    model.eval()
    return accuracy


def build_checkpoint(path: Path, *, trained: bool = True, seed: int = 0, image_size: int = IMAGE_SIZE) -> Path:
    """Write a complete CLIP checkpoint folder at `path` and return it."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed, image_size=image_size)
    processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                      crop_size={"height": image_size, "width": image_size})
    if trained:
        prep = Preprocessing(image_size, None, (image_size, image_size),
                             tuple(processor.image_mean), tuple(processor.image_std))  # type: ignore[arg-type]
        accuracy = train(model, tokenizer, prep, seed=seed)
        if accuracy < 1.0:
            raise RuntimeError(f"tiny CLIP did not learn the synthetic captions (accuracy {accuracy:.2f})")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    return path
