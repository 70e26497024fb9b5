"""Tokenizers: loading one by name, folder or ``demo``, a digest of its vocabulary and settings, and truncation counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datamodules import demo
from datamodules.errors import InputError


def load_tokenizer(name_or_path: str, cache_dir: str | Path, add_prefix_space: bool = False):
    """``"demo"`` -> the demo WordPiece tokenizer; anything else -> ``AutoTokenizer.from_pretrained``."""
    if name_or_path == "demo":
        return demo.demo_tokenizer(cache_dir)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        # byte-level BPE tokenizers need a leading space to split pre-tokenized words like the
        # middle of a sentence (as in transformers' run_ner.py)
        if add_prefix_space and type(tokenizer).__name__.startswith(
            ("Roberta", "GPT2", "Bart", "Deberta", "Longformer", "Bloom")
        ):
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, add_prefix_space=True)
    except OSError:
        raise InputError(
            f"tokenizer {name_or_path!r} is neither a local folder nor reachable on the "
            "Hugging Face hub: pass an existing folder or hub name as data.tokenizer"
        ) from None
    return tokenizer


def _tokenizer_digest(tokenizer) -> str:
    """Hash of what a tokenizer does (vocabulary, normalizer, ...), without the truncation and padding
    state that the backend keeps from its last call, so the same tokenizer hashes alike everywhere."""
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    definition["model_input_names"] = list(tokenizer.model_input_names)  # e.g. token types for pairs
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def truncated(encoded) -> list[bool]:
    """Per example of a fast-tokenizer batch: did truncation at ``max_length`` drop sub-tokens?
    (The Rust encodings keep what was cut in ``overflowing``, so no second tokenization is needed.)"""
    return [bool(encoding.overflowing) for encoding in encoded.encodings]
