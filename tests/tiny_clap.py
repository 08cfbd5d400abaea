"""A tiny random CLAP checkpoint on disk (config + weights + byte-level BPE vocab + feature extractor), saved with
save_pretrained and loaded back through the audio expert's real loader (ingest/experts/sound.py load_clap)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

from search_app.bench import byte_level_roberta_tokenizer

PROJECTION_DIM = 20  # deliberately not 512


def build_tokenizer() -> RobertaTokenizer:
    """Roberta's byte-level BPE over all bytes (no merges: a character per token), as the bench builds it."""
    return byte_level_roberta_tokenizer()


def build_clap(path: Path, seed: int = 0) -> Path:
    """Save a tiny random CLAP (about 40k parameters) to `path` and return it."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=80, type_vocab_size=1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2),
        # 16 mel bins x spec_size 128: freq_ratio 8, so 10 s (1001 frames) fit the swin input (128 x 8 >= 1001).
        audio_config=dict(num_mel_bins=16, spec_size=128, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                          patch_embeds_hidden_size=16, window_size=4, enable_fusion=False,
                          projection_dim=PROJECTION_DIM),
        projection_dim=PROJECTION_DIM,
    )
    model = ClapModel(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ClapFeatureExtractor(feature_size=16, sampling_rate=48_000, max_length_s=10).save_pretrained(path)
    return path
