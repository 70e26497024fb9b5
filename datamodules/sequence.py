"""Sequence classification data: one text (e.g. a sentence) and one label per row."""

from __future__ import annotations

import functools

from transformers import DataCollatorWithPadding

from datamodules.base import ClassificationDataModule, truncated
from datamodules.errors import InputError
from datamodules.readers import read_table


class SequenceClassificationDataModule(ClassificationDataModule):
    task = "sequence"
    label_column_name = "label"
    label_option = "label_column"

    def __init__(self, *args, text_column: str = "text", label_column: str = "label", **kwargs) -> None:
        """
        Args:
            text_column: column holding the text (``sentence`` for SST-2).
            label_column: column holding the label, an index or a name (absent for unlabelled predict data).
        """
        super().__init__(*args, **kwargs)
        self.text_column, self.label_column = text_column, label_column

    def _normalise(self, rows: list[dict], where: str) -> list[dict]:
        if rows and self.text_column not in rows[0]:
            raise InputError(
                f"{where} has no text column {self.text_column!r} (columns: {sorted(rows[0])}): "
                "set data.text_column"
            )
        normalised = []
        for number, row in enumerate(rows, 1):
            text, label = row[self.text_column], row.get(self.label_column)
            if not isinstance(text, str) or not text.strip():
                raise InputError(
                    f"{where}: row {number} has an empty {self.text_column!r}: remove the row or fill it in"
                )
            if isinstance(label, float) or (isinstance(label, str) and _is_fraction(label)):
                raise InputError(
                    f"{where}: row {number} has the label {label!r}, a fraction: labels are class names or "
                    "integer ids (regression is not supported): fix data.label_column"
                )
            normalised.append({"text": text, "label": label})
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
        encoded = tokenizer(batch["text"], truncation=True, max_length=self.max_length)
        encoded["truncated"] = truncated(encoded)
        # word ids (from the tokenizer's pre-tokenizer) let hidden-state transfer align two tokenizers
        encoded["word_ids"] = [
            [-1 if w is None else w for w in encoded.word_ids(i)] for i in range(len(batch["text"]))
        ]
        return dict(encoded)

    def label_ids(self, batch: dict[str, list], encoded: dict[str, list]) -> list[int]:
        return batch["label"]

    @functools.cached_property
    def collator(self) -> DataCollatorWithPadding:
        return DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)


def _is_fraction(text: str) -> bool:
    """``"0.5"`` or ``"3.0"``: a float, not a class name or an integer id."""
    try:
        float(text)
    except ValueError:
        return False
    return not text.strip().lstrip("-").isdigit()
