"""A tiny random Whisper checkpoint on disk (config, weights, generation config with its language, task and timestamp
tokens, a byte-level BPE tokenizer of letters, the feature extractor), built offline and loaded back through the
speech expert's real loader (ingest/experts/whisper.py load_whisper)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

LANGUAGES = ("en", "de", "fr")
CONTROL = ("<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>",
           "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")
# 0.00 .. 2.00 s (a real Whisper has 1501, to 30 s): random weights pick times at random, and a short range keeps them
# inside a spoken phrase's chunk (place() drops a segment that starts past its chunk's end, as it should).
TIMESTAMPS = tuple(f"<|{i * 0.02:.2f}|>" for i in range(101))


def build_whisper(path: Path, seed: int = 0) -> Path:
    """Save a tiny random multilingual Whisper (about 100k parameters) to `path` and return it."""
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    # A character per token, no merges: the letters and the space only, so whatever random weights decode has words
    # in it (the full-text store keeps only segments with a word).
    space = bytes_to_unicode()[ord(" ")]
    for ch in (space, *"abcdefghijklmnopqrstuvwxyz"):
        vocab[ch] = len(vocab)
    for token in (*CONTROL, *TIMESTAMPS):
        vocab[token] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), unk_token="<|endoftext|>",
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(CONTROL[1:])})
    tokenizer.save_pretrained(path)
    ids = {token: vocab[token] for token in (*CONTROL, TIMESTAMPS[0])}
    features = WhisperFeatureExtractor(feature_size=16)
    features.save_pretrained(path)
    config = WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=16, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=48, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], max_length=48,
        is_multilingual=True, lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50, begin_suppress_tokens=[ids["<|endoftext|>"]],
        alignment_heads=[[0, 0], [0, 1]],  # cross-attention heads for word times (OpenAI's checkpoints name theirs)
        suppress_tokens=[], forced_decoder_ids=None,
    )
    model.save_pretrained(path)
    return path
