"""Vocabulary pruning: keep only the word-embedding rows a task's text uses.

A MiniLM-L6 student's word embeddings (30,522 x 384) are 11.7M parameters, more than its encoder
after half of it is pruned, and most rows are tokens a task never sees. As TextPruner's vocabulary
pruning does (Yang et al. 2022), the kept vocabulary is the tokens of the training split
(tokenized as training tokenizes it) plus the special tokens; shrink also keeps the
single-character tokens (``a``, ``##a``, ...) of every character that text uses, so a word made of
removed pieces is spelled out from characters instead of becoming ``[UNK]``. The model keeps its architecture with a smaller
``vocab_size``, and the tokenizer stays a standard WordPiece tokenizer with a shorter vocabulary:
the folder loads in plain transformers, quantizes and exports to ONNX like any other. Text made of
kept tokens gets exactly the logits it got before (tested); other text is tokenized into kept
pieces, which ``shrink prune-vocab`` measures on the validation split.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.artifacts.model_folder import save_tokenizer


def _wordpiece_state(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's ``tokenizer.json`` as a dict; WordPiece only (BPE merges would need rewriting)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    kind = state.get("model", {}).get("type")
    if kind != "WordPiece":
        raise InputError(
            f"vocabulary pruning needs a fast WordPiece tokenizer (BERT, MiniLM, MPNet, ELECTRA); "
            f"this one is {kind or type(tokenizer).__name__}: keep its full vocabulary"
        )
    return state


def kept_token_ids(
    tokenizer: Any, token_ids: Iterable[Sequence[int]], min_count: int = 1, keep_first: int = 0
) -> list[int]:
    """The ids to keep, ascending: those seen at least ``min_count`` times in ``token_ids`` (the
    tokenized training split), the special and added tokens, the single-character tokens of every
    character in them, and the first ``keep_first`` ids."""
    state = _wordpiece_state(tokenizer)
    prefix = state["model"].get("continuing_subword_prefix") or "##"
    vocab = state["model"]["vocab"]
    counts = Counter(i for ids in token_ids for i in ids)
    keep = {i for i, count in counts.items() if count >= min_count}
    # characters of the scripts the text is written in: "x" and "##x" spell out any unseen word of them
    specials = set(tokenizer.all_special_ids) | {token["id"] for token in state["added_tokens"]}
    seen = {token.removeprefix(prefix) for token, i in vocab.items() if i in counts and i not in specials}
    seen_chars = set("".join(seen))
    keep |= {
        i for token, i in vocab.items() if len(token.removeprefix(prefix)) == 1 and token[-1] in seen_chars
    }
    keep |= specials
    keep |= set(range(min(keep_first, len(vocab))))
    return sorted(keep)


def _remap_processor(processor: dict[str, Any] | None, new_id: dict[int, int]) -> None:
    """Point the post-processor's [CLS] / [SEP] (or <s> / </s>) at their new ids."""
    if not processor:
        return
    kind = processor["type"]
    if kind == "Sequence":
        for part in processor["processors"]:
            _remap_processor(part, new_id)
    elif kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("cls", "sep"):
            processor[key][1] = new_id[processor[key][1]]
    elif kind != "ByteLevel":  # ByteLevel holds no ids
        raise InputError(
            f"vocabulary pruning does not know the {kind} post-processor: keep the full vocabulary"
        )


def pruned_tokenizer(tokenizer: Any, keep: list[int]) -> Any:
    """A copy of ``tokenizer`` whose vocabulary is ``keep`` (old ids, ascending) renumbered 0..n-1."""
    from transformers import AutoTokenizer

    state = _wordpiece_state(tokenizer)
    new_id = {old: new for new, old in enumerate(keep)}
    vocab = state["model"]["vocab"]
    state["model"]["vocab"] = {token: new_id[i] for token, i in vocab.items() if i in new_id}
    for token in state["added_tokens"]:
        token["id"] = new_id[token["id"]]
    _remap_processor(state.get("post_processor"), new_id)
    if state.get("padding"):
        state["padding"]["pad_id"] = new_id[state["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tokenizer, tmp)
        for stale in ("vocab.txt", "special_tokens_map.json"):  # tokenizer.json is the one source
            (Path(tmp) / stale).unlink(missing_ok=True)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
        config_path = Path(tmp) / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        if "added_tokens_decoder" in config:  # keyed by id
            config["added_tokens_decoder"] = {
                str(new_id[int(i)]): token for i, token in config["added_tokens_decoder"].items()
            }
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
        smaller = AutoTokenizer.from_pretrained(tmp)
        smaller.backend_tokenizer  # noqa: B018 - loaded now, before the folder goes
    if len(smaller) != len(keep):
        raise RuntimeError(f"pruned tokenizer has {len(smaller)} tokens, expected {len(keep)}")
    return smaller


def prune_vocabulary(model: torch.nn.Module, keep: list[int]) -> None:
    """Keep only rows ``keep`` of the word embeddings (in place) and renumber the config's token ids."""
    old = model.get_input_embeddings()
    new_id = {o: n for n, o in enumerate(keep)}
    config = model.config
    pad = getattr(config, "pad_token_id", None)
    if pad is not None and pad not in new_id:
        raise InputError(f"the padding token id {pad} is not among the kept tokens")
    rows = torch.tensor(keep, dtype=torch.long)
    smaller = torch.nn.Embedding(
        len(keep), old.embedding_dim, padding_idx=new_id.get(pad) if pad is not None else None
    )
    with torch.no_grad():
        smaller.weight.copy_(old.weight[rows])
    model.set_input_embeddings(smaller)
    embeddings = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
    if (
        embeddings is not None and hasattr(embeddings, "padding_idx") and pad is not None
    ):  # MPNet, RoBERTa positions
        embeddings.padding_idx = new_id[pad]
    config.vocab_size = len(keep)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            setattr(config, key, new_id.get(value))
    config.shrink_vocabulary = {"kept": len(keep), "of": len(old.weight)}
