"""``shrink-classify``: classify raw text from the terminal with any stage's output.

    shrink-classify outputs/demo/sequence_distill/model "a wonderful film" "dull and slow"
    echo "John lives in Berlin" | shrink-classify outputs/demo/token_qat/onnx-int8
    shrink-classify outputs/demo/sequence_qat/int8.ckpt --file sentences.txt
    shrink-classify outputs/demo/pair_distill/model --pair "the film was dull .<TAB>the plot is good ."

MODEL is a Hugging Face model folder (``OUT_DIR/model``), an ONNX folder (``shrink export
onnx``) or a ``.ckpt``. Texts come as arguments, else one per line on stdin (or ``--file``). One
JSON line per text: ``{"text", "label", "score"}`` (``--pair``: each input is two texts separated by a
tab, encoded as the tokenizer's pair, and the line also has ``"text_pair"``), or for NER ``{"text", "entities": [{"type",
"word", "start", "end", "score"}]}`` with character offsets into the text. Words are tagged by
their first sub-token, as in training; ``B-X`` starts an entity, ``I-X`` continues one of type X.
Lines come out in the input's order; inside each window of 64 batches the texts run longest first.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from datamodules.errors import InputError
from lightning_modules.artifacts.onnx_session import ONNX_FILE, OnnxClassifier, folder_task

# (batch of numpy arrays, word ids per row, character offsets per row): what a tokenizer gives here
Encoded = tuple[dict[str, np.ndarray], list[list[int | None]] | None, list[list[list[int]]] | None]


class FolderTokenizer:
    """A folder's ``tokenizer.json`` run by the ``tokenizers`` library, as ``transformers`` runs it
    (special tokens, pairs, truncation to ``model_max_length``, padding), without importing torch."""

    def __init__(self, folder: str | Path) -> None:
        if not (Path(folder) / "tokenizer.json").is_file():
            raise InputError(f"{folder} has no tokenizer.json: export it again with shrink export onnx")
        config_file = Path(folder) / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        pad = config.get("pad_token") or "[PAD]"
        pad = pad["content"] if isinstance(pad, dict) else pad
        pad_id = self.tokenizer.token_to_id(pad)
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)
        self.model_max_length = min(int(config.get("model_max_length") or 512), 10**6)

    def __call__(self, texts: list[str], pairs: list[str] | None, max_length: int, offsets: bool) -> Encoded:
        self.tokenizer.enable_truncation(min(max_length, self.model_max_length))
        rows = self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)) if pairs else texts)
        batch = {
            "input_ids": np.array([r.ids for r in rows], dtype=np.int64),
            "attention_mask": np.array([r.attention_mask for r in rows], dtype=np.int64),
            "token_type_ids": np.array([r.type_ids for r in rows], dtype=np.int64),
        }
        if not offsets:
            return batch, None, None
        return batch, [r.word_ids for r in rows], [[list(o) for o in r.offsets] for r in rows]


class Classifier:
    """``classifier(texts)`` -> one result per text, for an ONNX folder (ONNX Runtime, no torch), a
    model folder or a ``.ckpt`` (PyTorch), with its tokenizer, task and label names."""

    def __init__(self, path: str, threads: int = 1) -> None:
        if not Path(path).exists():
            raise InputError(f"model {path} does not exist: give a model folder, an ONNX folder or a .ckpt")
        if (Path(path) / ONNX_FILE).is_file():
            config = json.loads((Path(path) / "config.json").read_text())
            self.task = folder_task(config)
            self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
            self.tokenizer = FolderTokenizer(path)
            self.run = OnnxClassifier(Path(path) / ONNX_FILE, threads)
        else:  # PyTorch, loaded only for it
            pytorch = import_module("lightning_modules.commands.classify_pytorch")
            self.run, self.task, self.labels, self.tokenizer = pytorch.pytorch_classifier(path, threads)

    def __call__(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int = 512
    ) -> list[dict[str, Any]]:
        if pairs is not None and self.task != "sequence":
            raise InputError("--pair is for sequence classification: a token classifier takes one text")
        batch, word_ids, offsets = self.tokenizer(texts, pairs, max_length, self.task == "token")
        logits = np.asarray(self.run(batch), dtype=np.float32)
        pair = (lambda n: {"text_pair": pairs[n]}) if pairs else (lambda n: {})
        if len(self.labels) == 1:  # regression: the predicted number, named after the label
            return [
                {"text": t, **pair(n), self.labels[0]: round(float(v), 6)}
                for n, (t, v) in enumerate(zip(texts, logits.reshape(len(texts)), strict=True))
            ]
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = exp / exp.sum(-1, keepdims=True)
        if self.task == "sequence":
            return [
                {
                    "text": t,
                    **pair(n),
                    "label": self.labels[int(p.argmax())],
                    "score": round(float(p.max()), 6),
                }
                for n, (t, p) in enumerate(zip(texts, probabilities, strict=True))
            ]
        rows = []
        for row, text in enumerate(texts):
            words = word_spans(word_ids[row], offsets[row])
            tags = [
                (self.labels[int(probabilities[row, t].argmax())], float(probabilities[row, t].max()))
                for t, _, _ in words
            ]
            rows.append({"text": text, "entities": entities(text, words, tags)})
        return rows


def word_spans(word_ids: list[int | None], offsets: list[list[int]]) -> list[tuple[int, int, int]]:
    """``(first sub-token index, start char, end char)`` of each word."""
    spans: dict[int, list[int]] = {}
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        start, end = offsets[position]
        if word not in spans:
            spans[word] = [position, start, end]
        else:
            spans[word][2] = end
    return [tuple(spans[w]) for w in sorted(spans)]


def entities(text: str, words: list[tuple[int, int, int]], tags: list[tuple[str, float]]) -> list[dict]:
    """IOB2 word tags -> entities with character offsets; the score is the mean of the words' scores."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for (_, start, end), (tag, score) in zip(words, tags, strict=True):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current is not None and current["type"] == kind:
            current["end"], current["scores"] = end, [*current["scores"], score]
            continue
        current = None
        if prefix in ("B", "I") and kind:  # an I- without its B- starts an entity (conlleval)
            current = {"type": kind, "start": start, "end": end, "scores": [score]}
            found.append(current)
    return [
        {
            "type": e["type"],
            "word": text[e["start"] : e["end"]],
            "start": e["start"],
            "end": e["end"],
            "score": round(sum(e["scores"]) / len(e["scores"]), 6),
        }
        for e in found
    ]


def windows_longest_first(texts: list[str], pairs: list[str] | None, batch_size: int) -> list[list[int]]:
    """Input indices in windows of 64 batches, each sorted longest first (in characters): batches of
    similar length pad little, and the output still streams, a window
    at a time, in the input's order."""
    size = 64 * batch_size
    length = (lambda n: len(texts[n]) + len(pairs[n])) if pairs else (lambda n: len(texts[n]))
    return [
        sorted(range(s, min(s + size, len(texts))), key=lambda n: -length(n))
        for s in range(0, len(texts), size)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="shrink classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="model folder, ONNX folder or .ckpt")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    parser.add_argument("--file", help="read texts from this file, one per line")
    parser.add_argument("--pair", action="store_true", help="each input is two texts separated by a tab")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_intermixed_args(argv)  # options may follow the texts
    try:
        if args.batch_size < 1 or args.threads < 1:
            raise InputError("--batch-size and --threads must be at least 1")
        if args.texts:
            texts = list(args.texts)
        else:
            try:
                source = open(args.file, encoding="utf-8") if args.file else sys.stdin  # noqa: SIM115
                with source:
                    texts = [line.rstrip("\n") for line in source]
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(
                    f"cannot read the texts ({e}): give a UTF-8 text file, one text per line"
                ) from None
        empty = [i + 1 for i, text in enumerate(texts) if not text.strip()]
        if not texts or empty:
            where = f"input {empty[0]} is empty" if empty else "no input"
            raise InputError(f"{where}: give one non-empty text per argument or per line")
        pairs = None
        if args.pair:
            missing = [i + 1 for i, text in enumerate(texts) if "\t" not in text]
            if missing:
                raise InputError(f"input {missing[0]} has no tab: with --pair give 'text<TAB>second text'")
            texts, pairs = map(list, zip(*(text.split("\t", 1) for text in texts), strict=True))
            if any(not p.strip() for p in pairs):
                raise InputError("a second text is empty: with --pair give 'text<TAB>second text'")
        classifier = Classifier(args.model, args.threads)
        for window in windows_longest_first(texts, pairs, args.batch_size):
            results = {}
            for chunk in (window[i : i + args.batch_size] for i in range(0, len(window), args.batch_size)):
                outputs = classifier([texts[n] for n in chunk], [pairs[n] for n in chunk] if pairs else None)
                results.update(zip(chunk, outputs, strict=True))
            for n in sorted(results):  # the input's order
                print(json.dumps(results[n], ensure_ascii=False), flush=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
