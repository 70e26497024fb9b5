"""Augmented copies of the training rows, for the teacher to score (distillation's transfer data).

Sequence tasks follow Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks"): each word is masked (``mask``) or swapped for a word of the training vocabulary
(``swap``), then a random n-gram of the result is kept (``ngram``). Their labels may no longer
hold ("not good" -> "good"), so the copies go in unlabelled: the teacher's soft targets label them.
``mlm`` replaces words with a masked language model's sampled guesses (TinyBERT's augmentation).

Token tasks keep the tags aligned and valid IOB2 (Dai & Adel 2020, "An Analysis of Simple Data
Augmentation for Named Entity Recognition"): ``swap`` / ``mask`` / ``mlm`` touch only words tagged
``O``, ``mention`` replaces an entity mention by another mention of the same type from the training
set. Entity words are never edited in place, so the copies keep their tags as labels.

Every generator is deterministic for a seed: copy ``k`` of row ``i`` draws from its own generator.
"""

from __future__ import annotations

import random
from collections import defaultdict

import torch

from datamodules.errors import InputError
from datamodules.tokenizers import _tokenizer_digest, load_tokenizer

SEQUENCE_METHODS = ("mask", "swap", "ngram", "mlm")
TOKEN_METHODS = ("mask", "swap", "mention", "mlm")
P_MASK, P_SWAP, P_NGRAM, P_MLM, P_MENTION = 0.1, 0.1, 0.25, 0.3, 0.3  # Tang et al.; Dai & Adel
TOP_K = 15  # candidates a masked LM's guess is sampled from (TinyBERT's K)


def check_methods(task: str, methods: list[str], factor: int) -> None:
    known = SEQUENCE_METHODS if task == "sequence" else TOKEN_METHODS
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise InputError(f"data.augment {unknown} is not a {task} augmentation: choose from {list(known)}")
    if not isinstance(factor, int) or factor <= 0:
        raise InputError(f"data.augment_factor is {factor}: give 1 or more augmented copies per training row")


def augment_rows(
    task: str,
    rows: list[dict],
    methods: list[str],
    factor: int,
    seed: int,
    mask_token: str,
    masked_lm=None,
) -> list[dict]:
    """``factor`` augmented copies of each row (duplicates of a row or of each other dropped).
    ``masked_lm`` is a ``MaskedWordFiller`` when ``mlm`` is among ``methods``."""
    vocabulary = _vocabulary(task, rows)
    mentions = _mentions_by_type(rows) if task == "token" else {}
    out = []
    for i, row in enumerate(rows):
        for k in range(factor):
            rng = random.Random(f"{seed}-{i}-{k}")
            if task == "sequence":
                copy = _sequence_copy(row, methods, rng, vocabulary, mask_token)
            else:
                copy = _token_copy(row, methods, rng, vocabulary, mentions, mask_token)
            copy["_mlm_seed"] = rng.randrange(2**31)
            out.append(copy)
    if "mlm" in methods:
        masked_lm.fill(out, task)
    seen = {_key(r) for r in rows}  # copies equal to a training row or to an earlier copy add nothing
    result = []
    for row in out:
        row.pop("_mlm_seed")
        if _key(row) not in seen:
            seen.add(_key(row))
            result.append(row)
    return result


def _key(row: dict) -> str:
    return repr([row.get("text"), row.get("text_pair"), row.get("tokens")])


# --- sequence ------------------------------------------------------------------------------------
def _sequence_copy(row, methods, rng, vocabulary, mask_token) -> dict:
    copy = {"text": _edit_text(row["text"], methods, rng, vocabulary, mask_token), "label": None}
    if "text_pair" in row:
        copy["text_pair"] = _edit_text(row["text_pair"], methods, rng, vocabulary, mask_token)
    return copy


def _edit_text(text: str, methods, rng, vocabulary, mask_token) -> str:
    words = []
    for word in text.split():
        draw = rng.random()
        if "mask" in methods and draw < P_MASK:
            word = mask_token
        elif "swap" in methods and draw < P_MASK + P_SWAP:
            word = rng.choice(vocabulary)
        elif "mlm" in methods and draw < P_MASK + P_SWAP + P_MLM:
            word = MaskedWordFiller.MARK
        words.append(word)
    if "ngram" in methods and rng.random() < P_NGRAM and len(words) > 1:
        n = rng.randint(1, min(5, len(words) - 1))
        start = rng.randint(0, len(words) - n)
        words = words[start : start + n]
    return " ".join(words)


# --- token ---------------------------------------------------------------------------------------
def _token_copy(row, methods, rng, vocabulary, mentions, mask_token) -> dict:
    tokens, tags = list(row["tokens"]), list(row["tags"])
    if "mention" in methods:
        tokens, tags = _swap_mentions(tokens, tags, rng, mentions)
    for j, tag in enumerate(tags):
        if tag != "O":
            continue
        draw = rng.random()
        if "mask" in methods and draw < P_MASK:
            tokens[j] = mask_token
        elif "swap" in methods and draw < P_MASK + P_SWAP:
            tokens[j] = rng.choice(vocabulary)
        elif "mlm" in methods and draw < P_MASK + P_SWAP + P_MLM:
            tokens[j] = MaskedWordFiller.MARK
    return {"tokens": tokens, "tags": tags}


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Entity mentions as ``(start, end, type)``: a mention starts at ``B-X``, or at ``I-X`` after
    another type (IOB1), and runs over the ``I-X`` that follow."""
    found, start, kind = [], None, None
    for j, tag in enumerate([*tags, "O"]):
        inside = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not inside:
            found.append((start, j, kind))
            start, kind = None, None
        if tag != "O" and not inside:
            start, kind = j, tag[2:]
    return found


def _mentions_by_type(rows: list[dict]) -> dict[str, list[list[str]]]:
    mentions = defaultdict(list)
    for row in rows:
        if row.get("tags"):
            for start, end, kind in spans(row["tags"]):
                mentions[kind].append(row["tokens"][start:end])
    return {k: sorted(v) for k, v in mentions.items()}


def _swap_mentions(tokens, tags, rng, mentions) -> tuple[list[str], list[str]]:
    new_tokens, new_tags, at = [], [], 0
    for start, end, kind in spans(tags):
        new_tokens += tokens[at:start]
        new_tags += tags[at:start]
        words = tokens[start:end]
        if rng.random() < P_MENTION and mentions.get(kind):
            words = rng.choice(mentions[kind])
        new_tokens += words
        new_tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        at = end
    return new_tokens + tokens[at:], new_tags + tags[at:]


def _vocabulary(task: str, rows: list[dict]) -> list[str]:
    """The words to swap in: every word of the training rows (so drawn by frequency); for token
    tasks only the words tagged ``O``."""
    if task == "sequence":
        words = [w for r in rows for t in (r["text"], r.get("text_pair") or "") for w in t.split()]
    else:
        words = [w for r in rows for w, t in zip(r["tokens"], r["tags"], strict=True) if t == "O"]
    if not words:
        raise InputError("data.augment: the training rows have no words to swap in: drop 'swap'")
    return words


# --- masked language model -----------------------------------------------------------------------
class MaskedWordFiller:
    """Fills the words marked ``MARK`` with a masked language model's guesses, sampled from its
    ``TOP_K`` whole-word tokens (TinyBERT's word replacement), batch by batch."""

    MARK = "\x00mlm\x00"

    def __init__(self, path: str, student_tokenizer, batch_size: int = 32) -> None:
        from transformers import AutoModelForMaskedLM

        try:
            self.tokenizer = load_tokenizer(path, "~/.cache/shrink")
            self.model = AutoModelForMaskedLM.from_pretrained(path).eval()
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise InputError(
                f"data.masked_lm {path!r} is not a masked language model folder ({reason}): "
                "give a BERT-family MLM with the student's tokenizer"
            ) from None
        if _tokenizer_digest(self.tokenizer) != _tokenizer_digest(student_tokenizer):
            raise InputError(
                f"data.masked_lm {path!r} tokenizes differently from the student "
                f"({student_tokenizer.name_or_path!r}): give a masked LM with the student's tokenizer"
            )
        if self.tokenizer.mask_token is None:
            raise InputError(f"data.masked_lm {path!r} has no mask token: give a masked language model")
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_tokens)
        # whole words only: no continuation pieces, no special or unused tokens
        self.allowed = torch.tensor(
            [
                not (t in special or t.startswith(("##", "[unused")) or not t.strip() or t.startswith("<"))
                for t in vocab
            ]
        )
        self.batch_size = batch_size

    @torch.no_grad()
    def fill(self, rows: list[dict], task: str) -> None:
        fields = ["tokens"] if task == "token" else ["text", "text_pair"]
        for field in fields:
            todo = [r for r in rows if field in r and self.MARK in _words(r[field])]
            for start in range(0, len(todo), self.batch_size):
                self._fill_batch(todo[start : start + self.batch_size], field)

    def _fill_batch(self, rows: list[dict], field: str) -> None:
        mask = self.tokenizer.mask_token
        words = [[mask if w == self.MARK else w for w in _words(r[field])] for r in rows]
        encoded = self.tokenizer(
            words,
            is_split_into_words=True,
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        )
        logits = self.model(**encoded).logits.float()
        logits[..., ~self.allowed[: logits.shape[-1]]] = float("-inf")
        for b, row in enumerate(rows):
            generator = torch.Generator().manual_seed(row["_mlm_seed"])
            positions = (encoded["input_ids"][b] == self.tokenizer.mask_token_id).nonzero().flatten()
            top = logits[b, positions].topk(TOP_K, dim=-1)
            picks = torch.multinomial(top.values.softmax(-1), 1, generator=generator).flatten()
            guesses = iter(
                self.tokenizer.convert_ids_to_tokens(top.indices[range(len(picks)), picks].tolist())
            )
            filled = [next(guesses, w) if w == mask else w for w in words[b]]
            row[field] = filled if field == "tokens" else " ".join(filled)


def _words(value) -> list[str]:
    return value if isinstance(value, list) else value.split()
