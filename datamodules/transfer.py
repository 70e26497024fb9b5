"""Transfer data for distillation: rows the teacher scores on top of the labelled training rows.

Two sources, mixed into the training split: unlabelled files (``data.transfer_files``: in-domain
text without labels; for NER, sentences without tags) and augmented copies of the training rows
(``data.augment``, ``datamodules/augment.py``). Rows without labels train on the teacher's soft
loss alone; labelled rows on both losses (``lightning_modules/methods/teacher.py``). The mix is
fixed for a seed, so the teacher cache, exact resume and DDP ranks all see one training split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

from datamodules.augment import MaskedWordFiller, augment_rows, check_methods
from datamodules.errors import InputError
from datamodules.readers import _require_file, _utf8

log = logging.getLogger(__name__)


class TransferSet:
    """What a DataModule adds to its training split for a teacher to label."""

    def __init__(
        self,
        task: str,
        files: list[str] | None = None,
        ratio: float | None = None,
        augment: list[str] | None = None,
        factor: int = 1,
        seed: int = 0,
        masked_lm: str | None = None,
    ) -> None:
        """See the DataModule's ``transfer_files``, ``transfer_ratio``, ``augment``,
        ``augment_factor``, ``transfer_seed`` and ``masked_lm``."""
        if isinstance(files, str):
            files = [files]
        if isinstance(augment, str):
            augment = [augment]
        self.task, self.files, self.methods = task, list(files or []), list(augment or [])
        if ratio is not None and not ratio > 0:
            raise InputError(f"data.transfer_ratio is {ratio}: give transfer rows per labelled row, above 0")
        check_methods(task, self.methods, factor)
        if "mlm" in self.methods and not masked_lm:
            raise InputError("data.augment 'mlm' needs a masked language model: set data.masked_lm")
        self.ratio, self.factor, self.seed, self.masked_lm = ratio, factor, seed, masked_lm
        for path in self.files:
            _require_file(path)

    @property
    def active(self) -> bool:
        return bool(self.files or self.methods)

    def extend(self, datamodule, rows: list[dict]) -> list[dict]:
        """The training ``rows`` followed by the transfer rows (marked ``transfer``: no label)."""
        labelled_copies, unlabelled = [], []
        for path in self.files:
            unlabelled += self.read(datamodule, path)
        if self.methods:
            copies = self.augmented(datamodule, rows)
            labelled_copies = [r for r in copies if r.get(datamodule.label_column_name) is not None]
            unlabelled += [r for r in copies if r.get(datamodule.label_column_name) is None]
        if self.ratio is not None and len(unlabelled) > self.ratio * len(rows):
            keep = sorted(
                random.Random(self.seed).sample(range(len(unlabelled)), int(self.ratio * len(rows)))
            )
            unlabelled = [unlabelled[i] for i in keep]
        log.warning(
            "training split: %d labelled rows, %d augmented labelled copies, %d rows for the teacher alone",
            len(rows),
            len(labelled_copies),
            len(unlabelled),
        )
        return rows + labelled_copies + [dict(r, transfer=True) for r in unlabelled]

    @staticmethod
    def require_teacher(rows: list[dict]) -> None:
        """Stages without a teacher cannot train on transfer rows: one line."""
        if any(row.get("transfer") for row in rows):
            raise InputError(
                "data.transfer_files / data.augment add rows only a teacher can label: "
                "distill from a teacher or drop them"
            )

    def read(self, datamodule, path: str) -> list[dict]:
        """The rows of one transfer file, labels dropped (with a warning: the teacher labels them)."""
        label = datamodule.label_column_name
        suffix = Path(path).suffix.lower()
        tables = (".jsonl", ".json", ".tsv", ".csv") if datamodule.task == "sequence" else (".jsonl", ".json")
        if suffix in tables:
            rows = datamodule.read_file(path)
        elif datamodule.task == "sequence":
            if getattr(datamodule, "text_pair_column", None):
                raise InputError(
                    f"data.transfer_files: {path} is plain text but the task reads pairs: "
                    "give a .tsv or .jsonl with both text columns"
                )
            rows = [{"text": line, label: None} for line in _lines(path)]
        else:  # a CoNLL file: words in the first column, tags (if any) ignored
            rows = read_words(path)
        if not rows:
            raise InputError(f"data.transfer_files: {path} has no rows: give a file with text or drop it")
        if any(r.get(label) is not None for r in rows):
            log.warning("data.transfer_files: %s has labels; they are ignored (the teacher labels it)", path)
        return [dict(r, **{label: None}) for r in rows]

    def augmented(self, datamodule, rows: list[dict]) -> list[dict]:
        """The augmented copies of ``rows``, cached on disk by what makes them."""
        tokenizer = datamodule.tokenizer
        mask_token = tokenizer.mask_token or tokenizer.unk_token
        filler = MaskedWordFiller(self.masked_lm, tokenizer) if "mlm" in self.methods else None
        key = hashlib.sha256(
            json.dumps(
                [rows, self.methods, self.factor, self.seed, mask_token, _folder_digest(self.masked_lm)],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        path = datamodule.cache_dir / "augmented" / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        copies = augment_rows(self.task, rows, self.methods, self.factor, self.seed, mask_token, filler)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(f".tmp{os.getpid()}").write_text(json.dumps(copies))
        os.replace(path.with_suffix(f".tmp{os.getpid()}"), path)
        return copies


def label_table(datamodule, rows: list[dict], split: str) -> list[dict]:
    """The rows to tokenize, with an ``idx`` and label ids. In a split that mixes labelled rows and
    transfer rows, a ``labelled`` flag tells them apart and transfer rows carry a placeholder label
    (-100; 0.0 for regression) that the losses never read."""
    label = datamodule.label_column_name
    labelled = datamodule.has_labels(rows)
    mixed = labelled and any(row.get("transfer") for row in rows)
    table = []
    for i, row in enumerate(rows):
        item = dict(row, idx=i)
        value = row.get(label)
        if item.pop("transfer", False) and labelled:
            item[label] = _placeholder(datamodule, row)
        elif labelled:
            if value is None:
                raise InputError(
                    f"row {i} of split {split!r} has no label while others do: label it or drop it"
                )
            item[label] = (
                [datamodule.label_id(v, split) for v in value]
                if isinstance(value, list)
                else datamodule.label_id(value, split)
            )
        else:
            item.pop(label, None)
        if mixed:
            item["labelled"] = not row.get("transfer", False)
        table.append(item)
    return table


def _placeholder(datamodule, row: dict):
    if datamodule.task == "token":
        return [-100] * len(row["tokens"])
    return 0.0 if getattr(datamodule, "regression", False) else -100


@_utf8
def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


@_utf8
def read_words(path: str) -> list[dict]:
    """Sentences of a CoNLL-style file as word lists: the first column of each line, a blank line
    between sentences, ``-DOCSTART-`` skipped. Other columns (tags) are not read."""
    sentences, words = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            columns = line.split()
            if not columns and words:
                sentences.append({"tokens": words, "tags": None})
                words = []
            elif columns and columns[0] != "-DOCSTART-":
                words.append(columns[0])
    if words:
        sentences.append({"tokens": words, "tags": None})
    return sentences


def _folder_digest(path: str | None) -> list | None:
    """Names, sizes and times of a model folder's files: enough to tell a changed model."""
    if not path or not Path(path).is_dir():
        return path and [path]
    return sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(path).iterdir() if p.is_file()
    )
