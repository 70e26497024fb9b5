"""Token classification (NER) data: words with one tag each. Labels go on the first sub-token of
each word and -100 on the rest, or, with ``label_all_tokens``, on every sub-token with ``B-``
turned into ``I-`` on continuations. Word ids are kept per sub-token (-1 for special tokens and
padding): metrics read one prediction per word from them, and cross-tokenizer distillation aligns on them."""

from __future__ import annotations

import functools

import torch
from transformers import DataCollatorForTokenClassification

from datamodules.base import ClassificationDataModule
from datamodules.errors import InputError
from datamodules.readers import read_conll, read_table
from datamodules.tokenizers import truncated


def align_labels(
    word_ids: list[int | None], word_labels: list[int], label_names: list[str], label_all_tokens: bool = False
) -> list[int]:
    """Per-sub-token labels for one example, from its ``word_ids`` (None for special tokens)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(-100)
        elif word != previous or word_labels[word] < 0:  # < 0: a transfer row's placeholder
            labels.append(word_labels[word] if word != previous else -100)
        elif label_all_tokens:
            name = label_names[word_labels[word]]
            continuation = "I-" + name[2:] if name.startswith("B-") else name
            labels.append(
                label_names.index(continuation) if continuation in label_names else word_labels[word]
            )
        else:
            labels.append(-100)
        previous = word
    return labels


def word_start_mask(word_ids: torch.Tensor) -> torch.Tensor:
    """True at the first sub-token of each word, from padded word ids (-1 = no word)."""
    previous = torch.nn.functional.pad(word_ids[:, :-1], (1, 0), value=-1)
    return (word_ids >= 0) & (word_ids != previous)


class TokenClassificationDataModule(ClassificationDataModule):
    task = "token"
    label_column_name = "tags"
    label_option = "tags_column"

    def __init__(
        self,
        *args,
        tokens_column: str = "tokens",
        tags_column: str = "tags",
        tag_column: int = -1,
        label_all_tokens: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            tokens_column / tags_column: list columns of a JSONL file or hub dataset (``ner_tags`` for conll2003).
            tag_column: which whitespace-separated column of a CoNLL file holds the tags (-1 = last;
                CoNLL-2003's NER tags are column 3).
            label_all_tokens: label every sub-token instead of the first one only.
        """
        super().__init__(*args, **kwargs)
        self.tokens_column, self.tags_column, self.tag_column = tokens_column, tags_column, tag_column
        self.label_all_tokens = label_all_tokens

    def _encode_options(self) -> dict:
        return {"label_all_tokens": self.label_all_tokens}

    def sort_labels(self, labels: set[str]) -> list[str]:
        # O first, then each entity type with B- before I-
        return sorted(labels, key=lambda tag: (tag != "O", tag[2:], tag[:2]))

    def _normalise(self, rows: list[dict], where: str) -> list[dict]:
        if rows and self.tokens_column not in rows[0]:
            raise InputError(
                f"{where} has no tokens column {self.tokens_column!r} (columns: {sorted(rows[0])}): "
                "set data.tokens_column"
            )
        normalised = []
        for number, row in enumerate(rows, 1):
            tokens, tags = row[self.tokens_column], row.get(self.tags_column)
            if not isinstance(tokens, list) or not tokens:
                raise InputError(
                    f"{where}: row {number} has no {self.tokens_column!r} list: give one word per item"
                )
            if tags is not None and (not isinstance(tags, list) or len(tags) != len(tokens)):
                found = len(tags) if isinstance(tags, list) else type(tags).__name__
                raise InputError(
                    f"{where}: row {number} has {len(tokens)} {self.tokens_column!r} but {found} "
                    f"{self.tags_column!r}: give one tag per word"
                )
            normalised.append({"tokens": tokens, "tags": tags})
        return normalised

    def read_file(self, path: str) -> list[dict]:
        if path.endswith((".jsonl", ".json")):
            return self._normalise(read_table(path), path)
        return read_conll(path, self.tag_column)

    def read_hub(self, split: str) -> list[dict]:
        from datasets import load_dataset

        data = load_dataset(self.dataset, self.dataset_config, split=split)
        feature = getattr(data.features.get(self.tags_column), "feature", None)
        rows = self._normalise(data.to_list(), f"{self.dataset}:{split}")
        if hasattr(feature, "names"):  # Sequence(ClassLabel): ids -> tag names
            self._label_names = self._label_names or list(feature.names)
            for row in rows:
                row["tags"] = [feature.names[t] for t in row["tags"]]
        return rows

    def tokenize(self, tokenizer, batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(
            batch["tokens"], is_split_into_words=True, truncation=True, max_length=self.max_length
        )
        word_ids = [encoded.word_ids(i) for i in range(len(batch["tokens"]))]
        encoded["truncated"] = truncated(encoded)
        encoded["word_ids"] = [[-1 if w is None else w for w in ids] for ids in word_ids]
        return dict(encoded)

    def label_ids(self, batch: dict[str, list], encoded: dict[str, list]) -> list[list[int]]:
        word_ids = [[None if w < 0 else w for w in ids] for ids in encoded["word_ids"]]
        return [
            align_labels(ids, tags, self.label_names, self.label_all_tokens)
            for ids, tags in zip(word_ids, batch["tags"], strict=True)
        ]

    @functools.cached_property
    def collator(self) -> DataCollatorForTokenClassification:
        return DataCollatorForTokenClassification(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)
