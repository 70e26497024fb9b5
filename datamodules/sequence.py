"""Sequence classification data: one text (e.g. a sentence), or a pair of texts (premise and
hypothesis, two questions...), and one label per row."""

from __future__ import annotations

import functools

from transformers import DataCollatorWithPadding

from datamodules.base import ClassificationDataModule
from datamodules.errors import InputError
from datamodules.readers import read_table
from datamodules.tokenizers import truncated


class SequenceClassificationDataModule(ClassificationDataModule):
    task = "sequence"
    label_column_name = "label"
    label_option = "label_column"

    def __init__(
        self,
        *args,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        regression: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            text_column: column holding the text (``sentence`` for SST-2; ``premise`` for MNLI).
            text_pair_column: column holding the second text of a pair (``hypothesis`` for MNLI), encoded
                as the tokenizer's pair (``[CLS] a [SEP] b [SEP]``, token types 0 / 1), truncated
                ``longest_first``; None for single texts.
            label_column: column holding the label, an index or a name (absent for unlabelled predict data).
            regression: the labels are numbers (STS-B's similarity scores): one output named after the
                label column, MSE loss, Pearson / Spearman correlation and MSE as metrics.
        """
        super().__init__(*args, **kwargs)
        self.text_column, self.text_pair_column, self.label_column = (
            text_column,
            text_pair_column,
            label_column,
        )
        self.regression = regression
        if regression:  # one output: the model has num_labels 1, which transformers trains with MSE
            self._label_names = [label_column]

    def _normalise(self, rows: list[dict], where: str) -> list[dict]:
        columns = [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])
        for column, option in zip(columns, ("data.text_column", "data.text_pair_column"), strict=False):
            if rows and column not in rows[0]:
                raise InputError(
                    f"{where} has no text column {column!r} (columns: {sorted(rows[0])}): set {option}"
                )
        normalised = []
        for number, row in enumerate(rows, 1):
            text, label = row[self.text_column], row.get(self.label_column)
            for column in columns:
                if not isinstance(row[column], str) or not row[column].strip():
                    raise InputError(
                        f"{where}: row {number} has an empty {column!r}: remove the row or fill it in"
                    )
            if self.regression:
                pass  # numbers: label_id checks them
            elif isinstance(label, float) or (isinstance(label, str) and _is_fraction(label)):
                raise InputError(
                    f"{where}: row {number} has the label {label!r}, a fraction: labels are class names or "
                    "integer ids (for scores set data.regression true): fix data.label_column"
                )
            pair = {"text_pair": row[self.text_pair_column]} if self.text_pair_column else {}
            normalised.append({"text": text, **pair, "label": label})
        return normalised

    def read_file(self, path: str) -> list[dict]:
        return self._normalise(read_table(path), path)

    def read_hub(self, split: str) -> list[dict]:
        from datasets import load_dataset

        data = load_dataset(self.dataset, self.dataset_config, split=split)
        feature = data.features.get(self.label_column)
        rows = self._normalise(data.to_list(), f"{self.dataset}/{self.dataset_config or ''}:{split}")
        if hasattr(feature, "names"):  # ClassLabel: ids -> names; -1 marks unlabelled (GLUE test)
            self._label_names = self._label_names or list(feature.names)
            for row in rows:
                row["label"] = None if row["label"] == -1 else feature.names[row["label"]]
        return rows

    def tokenize(self, tokenizer, batch: dict[str, list]) -> dict[str, list]:
        pairs = batch.get("text_pair")
        encoded = tokenizer(batch["text"], pairs, truncation="longest_first", max_length=self.max_length)
        encoded["truncated"] = truncated(encoded)
        # word ids (from the tokenizer's pre-tokenizer) let hidden-state transfer align two tokenizers;
        # in a pair the second text's words are numbered after the first's, so ids stay unique
        encoded["word_ids"] = [pair_word_ids(encoded, i) for i in range(len(batch["text"]))]
        return dict(encoded)

    def label_ids(self, batch: dict[str, list], encoded: dict[str, list]) -> list[int]:
        return batch["label"]

    def label_id(self, value, split: str):
        if not self.regression:
            return super().label_id(value, split)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(
                f"label {value!r} in split {split!r} is not a number: data.regression needs numeric labels"
            ) from None

    @functools.cached_property
    def collator(self) -> DataCollatorWithPadding:
        return DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)


def pair_word_ids(encoded, i: int) -> list[int]:
    """Word index of each token of row ``i`` (-1: special or padding), counting the second text's
    words after the first's."""
    words, sequences = encoded.word_ids(i), encoded.sequence_ids(i)
    first = (
        max((w for w, s in zip(words, sequences, strict=True) if s == 0 and w is not None), default=-1) + 1
    )
    return [-1 if w is None else w + first * (s == 1) for w, s in zip(words, sequences, strict=True)]


def _is_fraction(text: str) -> bool:
    """``"0.5"`` or ``"3.0"``: a float, not a class name or an integer id."""
    try:
        float(text)
    except ValueError:
        return False
    return not text.strip().lstrip("-").isdigit()
