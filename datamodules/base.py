"""What the sequence and token DataModules share: finding the raw splits (embedded demo, local
files or the Hugging Face hub), turning labels into ids, tokenizing once with a disk cache, and
dynamically padded dataloaders. Subclasses say how rows are read, tokenized and collated."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules import demo
from datamodules.errors import InputError, check_options
from datamodules.hub import hub_or_cache
from datamodules.sampler import LengthGroupedSampler, LongestFirstSampler, ShuffleSampler
from datamodules.tokenizers import _tokenizer_digest, load_tokenizer
from datamodules.transfer import TransferSet, label_table

log = logging.getLogger(__name__)
CACHE_VERSION = "2"  # bump when the encoding changes, so old caches are not reused


class ClassificationDataModule(L.LightningDataModule):
    task: str  # "sequence" or "token", set by subclasses; linked to the model's task by the CLI
    label_column_name: str  # the column that holds labels after reading
    label_option: str  # the init argument naming the label column in the user's data

    def __init__(
        self,
        dataset: str = "demo",
        dataset_config: str | None = None,
        data_files: dict[str, str] | None = None,
        tokenizer: str | None = None,
        teacher_tokenizer: str | None = None,
        label_names: list[str] | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        group_by_length: bool = False,
        num_workers: int = 0,
        validation_split: str | list[str] = "validation",
        test_split: str = "test",
        predict_split: str = "test",
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        transfer_files: list[str] | None = None,
        transfer_ratio: float | None = None,
        augment: list[str] | None = None,
        augment_factor: int = 1,
        transfer_seed: int = 0,
        masked_lm: str | None = None,
        cache_dir: str = "~/.cache/shrink",
    ) -> None:
        """
        Args:
            dataset: ``"demo"`` (embedded, offline), a Hugging Face hub dataset name (``"glue"``,
                ``"conll2003"``), or ``"files"`` to read ``data_files``.
            dataset_config: hub dataset configuration, e.g. ``"sst2"`` for ``glue``; for the demo,
                ``"pairs"`` picks its sentence-pair task (sequence classification).
            data_files: split name -> local file, e.g. ``{train: train.tsv, validation: dev.tsv}``.
                Giving it implies ``dataset: files``.
            tokenizer: hub name or folder of the tokenizer; ``"demo"`` for the demo WordPiece.
                Defaults to the model's ``model_name_or_path``.
            teacher_tokenizer: for distillation from a teacher that tokenizes differently (e.g. MPNet
                teacher, BERT student): each example is tokenized for both, with word ids to align them.
            label_names: label list in id order. Read from the training data when not given.
                Integer labels in the data index into this list.
            max_length: truncate longer inputs (in sub-tokens, special tokens included).
            batch_size: training batch size per device.
            eval_batch_size: batch size for validate/test/predict (default: ``batch_size``).
            group_by_length: draw training batches of similar length (as transformers' Trainer
                ``group_by_length``): still random, much less padding, so faster steps on short texts,
                but other batches than a shuffle, which learned less in the measured short
                runs. ``model.split_by_length`` cuts the padding of shuffled batches instead.
            num_workers: worker processes of the validation / test / predict loaders (the training
                loader runs in the main process, which keeps its saved position exact on resume).
            validation_split / test_split / predict_split: which split each stage reads. A list of
                validation splits (MNLI: ``[validation_matched, validation_mismatched]``) validates on
                each: the first logs ``val/<metric>`` (what checkpoints monitor), the others
                ``val_<name>/<metric>``, ``<name>`` without ``validation_`` (``val_mismatched/accuracy``).
            max_train_samples / max_eval_samples: keep only the first N rows (quick runs).
            transfer_files / transfer_ratio / augment / augment_factor / transfer_seed / masked_lm:
                unlabelled files and augmented copies of the training rows that a teacher labels,
                added to the training split (distillation only); see ``datamodules/transfer.py``.
            cache_dir: where tokenized splits and the demo tokenizer are cached.
        """
        super().__init__()
        check_options(batch_size, eval_batch_size, max_length, num_workers, dataset, data_files, label_names)
        if data_files:
            dataset = "files"
        self.dataset, self.dataset_config, self.data_files = dataset, dataset_config, data_files or {}
        self.tokenizer_name = tokenizer
        self.teacher_tokenizer_name = teacher_tokenizer if teacher_tokenizer != tokenizer else None
        self._label_names = list(label_names) if label_names else None
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.group_by_length = group_by_length
        self.num_workers = num_workers
        validation_splits = (
            [validation_split] if isinstance(validation_split, str) else list(validation_split)
        )
        if not validation_splits or len(set(validation_splits)) < len(validation_splits):
            raise InputError(
                f"data.validation_split is {validation_split}: give one split or distinct splits"
            )
        # the validation splits after the first, by the metric prefix they log under
        self.extra_validation_splits = {
            f"val_{split.removeprefix('validation_')}": split for split in validation_splits[1:]
        }
        self.splits = {
            "fit": "train",
            "validate": validation_splits[0],
            "test": test_split,
            "predict": predict_split,
        }
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.cache_dir = Path(cache_dir).expanduser()
        self.transfer = TransferSet(
            self.task, transfer_files, transfer_ratio, augment, augment_factor, transfer_seed, masked_lm
        )
        self._raw: dict[str, list[dict]] = {}
        self._encoded: dict[str, Any] = {}
        self._tokenizer = None
        self._teacher_tokenizer = None

    # --- subclass hooks ----------------------------------------------------------------------
    def read_file(self, path: str) -> list[dict]:
        raise NotImplementedError

    def read_hub(self, split: str) -> list[dict]:
        raise NotImplementedError

    def tokenize(self, tokenizer, batch: dict[str, list]) -> dict[str, list]:
        """Tokenize a batch of rows: model inputs, ``word_ids`` (-1 = no word) and ``truncated`` flags."""
        raise NotImplementedError

    def label_ids(self, batch: dict[str, list], encoded: dict[str, list]) -> list:
        """Labels for the tokenized batch (labels in ``batch`` are already ids)."""
        raise NotImplementedError

    @property
    def collator(self):
        """The transformers collator that pads the student's inputs and labels."""
        raise NotImplementedError

    def sort_labels(self, labels: set[str]) -> list[str]:
        return sorted(labels)

    # --- raw rows ----------------------------------------------------------------------------
    def raw_split(self, split: str) -> list[dict]:
        """The rows of ``split`` with normalised column names and string labels (or none)."""
        if split not in self._raw:
            if self.dataset == "demo":  # dataset_config "pairs": the demo's sentence-pair task
                rows = demo.demo_split(self.dataset_config or self.task, split)
            elif self.dataset == "files":
                if split not in self.data_files:
                    raise InputError(
                        f"no file for split {split!r} in data.data_files (have {sorted(self.data_files)}): "
                        f"add '{split}: path' or choose another split"
                    )
                rows = self.read_file(self.data_files[split])
            else:
                try:
                    hub_or_cache(self.dataset)
                    rows = self.read_hub(split)
                except (ConnectionError, OSError, ValueError) as e:  # offline, unknown name, no such config
                    reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                    raise InputError(
                        f"data.dataset {self.dataset!r} (split {split!r}) could not be loaded from the Hugging "
                        f"Face hub ({reason}): use local files, --data.data_files '{{train: train.tsv, "
                        "validation: dev.tsv}'"
                    ) from None
            limit = self.max_train_samples if split == self.splits["fit"] else self.max_eval_samples
            rows = rows[:limit] if limit else rows
            if not rows:
                raise InputError(f"split {split!r} of {self.source} is empty: point it at data with rows")
            if split == self.splits["fit"] and self.transfer.active:
                rows = self.transfer.extend(self, rows)
            self._raw[split] = rows
        return self._raw[split]

    @property
    def source(self) -> str:
        return (
            ", ".join(f"{k}={v}" for k, v in self.data_files.items())
            if self.data_files
            else repr(self.dataset)
        )

    def has_labels(self, rows: list[dict]) -> bool:
        return any(row.get(self.label_column_name) is not None for row in rows)

    def require_labels(self, stage: str) -> None:
        """Raise a clear error when a split read by ``stage`` has no labels."""
        splits = [self.splits[stage], *(self.extra_validation_splits.values() if stage == "validate" else [])]
        for split in splits:
            if not self.has_labels(self.raw_split(split)):
                raise InputError(
                    f"split {split!r} of {self.source} has no labels (column {getattr(self, self.label_option)!r}): "
                    f"set data.{self.label_option} or use labelled data"
                )
        if stage == "fit":
            self.transfer.require_teacher(self.raw_split(self.splits["fit"]))

    @property
    def label_names(self) -> list[str]:
        """Labels in id order: from the config, or sorted from the training split."""
        if self._label_names is None:
            if self.dataset == "files" and "train" not in self.data_files:
                raise InputError("cannot infer the label list without a train file: set data.label_names")
            rows = self.raw_split(self.splits["fit"])
            values = set()
            for row in rows:
                value = row.get(self.label_column_name)
                values.update(value if isinstance(value, list) else [value])
            values.discard(None)
            if not values:
                raise InputError(f"the training split of {self.source} has no labels: set data.label_names")
            self._label_names = self.sort_labels({str(v) for v in values})
        return self._label_names

    def label_id(self, value: Any, split: str) -> int:
        """Id of one raw label: its position in ``label_names``, or an integer index into it."""
        names = self.label_names
        text = str(value)
        if text in self._label_index:
            return self._label_index[text]
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
            return int(text)
        raise InputError(
            f"label {text!r} in split {split!r} is not in the label list {names}: "
            "add it to data.label_names or fix the data"
        )

    @functools.cached_property
    def _label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    # --- tokenized splits --------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise InputError("no tokenizer: set data.tokenizer (or model.model_name_or_path)")
            self._tokenizer = load_tokenizer(
                self.tokenizer_name, self.cache_dir, add_prefix_space=self.task == "token"
            )
        return self._tokenizer

    @property
    def teacher_tokenizer(self):
        """The teacher's own tokenizer, or None when teacher and student share one."""
        if self._teacher_tokenizer is None and self.teacher_tokenizer_name is not None:
            self._teacher_tokenizer = load_tokenizer(
                self.teacher_tokenizer_name, self.cache_dir, self.task == "token"
            )
        return self._teacher_tokenizer

    def split_fingerprint(self, split: str) -> str:
        """A hash of everything the tokenized ``split`` depends on: data, tokenizers and settings."""
        tokenizers = [t for t in (self.tokenizer, self.teacher_tokenizer) if t is not None]
        parts = [
            CACHE_VERSION,
            type(self).__name__,
            split,
            self.max_length,
            self.label_names,
            self._encode_options(),
            [(t.name_or_path, _tokenizer_digest(t)) for t in tokenizers],
            hashlib.sha256(json.dumps(self.raw_split(split), sort_keys=True).encode()).hexdigest(),
        ]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        encoded = self.tokenize(self.tokenizer, batch)
        if self.label_column_name in batch:
            encoded["labels"] = self.label_ids(batch, encoded)
        if self.teacher_tokenizer is not None:
            teacher = self.tokenize(self.teacher_tokenizer, batch)
            encoded.update({f"teacher_{k}": v for k, v in teacher.items() if k != "truncated"})
        return encoded

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Dynamic padding: the student's inputs and labels by the transformers collator, word ids
        with -1, the teacher's inputs (if any) by its own tokenizer."""
        idx = torch.tensor([row.pop("idx") for row in rows])
        labelled = [row.pop("labelled") for row in rows] if "labelled" in rows[0] else None
        extra = {
            k: [row.pop(k) for row in rows]
            for k in list(rows[0])
            if k == "word_ids" or k.startswith("teacher_")
        }
        batch = dict(self.collator(rows))
        batch["word_ids"] = _pad(extra["word_ids"], batch["input_ids"].shape[1])
        if "teacher_input_ids" in extra:
            inputs = {
                k[len("teacher_") :]: v
                for k, v in extra.items()
                if k.startswith("teacher_") and k != "teacher_word_ids"
            }
            padded = self.teacher_tokenizer.pad(
                inputs, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
            batch.update({f"teacher_{k}": v for k, v in padded.items()})
            batch["teacher_word_ids"] = _pad(extra["teacher_word_ids"], padded["input_ids"].shape[1])
        batch["idx"] = idx
        if labelled is not None:  # a training split mixing labelled rows and transfer rows
            batch["labelled"] = torch.tensor(labelled, dtype=torch.bool)
        return batch

    def _encode_options(self) -> dict:
        """Subclass settings that change the encoding (part of the cache key)."""
        return {}

    def encoded_split(self, split: str):
        """The tokenized split as a ``datasets.Dataset``, cached on disk by content hash."""
        if split not in self._encoded:
            from datasets import Dataset

            table = label_table(self, self.raw_split(split), split)
            cache_file = self.cache_dir / "encoded" / f"{split}-{self.split_fingerprint(split)}.arrow"
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            encoded = Dataset.from_list(table).map(
                self.encode,
                batched=True,
                remove_columns=list(table[0].keys() - {"idx", "labelled"}),
                cache_file_name=str(cache_file),
                desc=f"tokenizing {split}",
            )
            truncated = sum(encoded["truncated"])
            if truncated:
                n, limit = len(encoded), self.max_length
                log.warning("%s: %d of %d examples truncated at max_length=%d", split, truncated, n, limit)
            self._encoded[split] = encoded.remove_columns("truncated")
        return self._encoded[split]

    # --- Lightning hooks ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        # tokenizes on rank 0 first so other ranks read the cache
        self.tokenizer, self.teacher_tokenizer  # noqa: B018

    # tensor cores want lengths in multiples of 8; on CPU it only adds padding (25% more tokens on
    # SST-2's short grouped batches), so it is on only when the trainer runs on a CUDA device
    pad_to_multiple_of: int | None = None

    def setup(self, stage: str) -> None:
        trainer = getattr(self, "trainer", None)
        on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        self.pad_to_multiple_of = 8 if on_cuda else None
        stages = ["fit", "validate"] if stage == "fit" else [stage]
        for name in stages:
            self.encoded_split(self.splits[name])
        if "validate" in stages:
            for split in self.extra_validation_splits.values():
                self.encoded_split(split)

    def loader(
        self, stage: str, shuffle: bool = False, split: str | None = None, longest_first: bool = False
    ) -> DataLoader:
        """The loader of the split that ``stage`` reads (or of ``split``): the training one keeps its
        position for exact resume; the others batch by ``eval_batch_size``, in file order or, with
        ``longest_first`` (what validate / test / predict use), longest example first."""
        data = self.encoded_split(split or self.splits[stage])
        if stage == "fit":
            # a StatefulDataLoader: Lightning saves its position in checkpoints, so a run resumed
            # mid-epoch sees exactly the batches it had not seen. It runs in the main process (the
            # data is tokenized already; padding a batch is cheap), which keeps that position exact.
            # The sampler cuts its order over the DDP ranks itself, so Lightning leaves it unwrapped
            # and its state (the epoch's generator state, the position) is what the loader saves.
            trainer = getattr(self, "trainer", None)
            ranks = {"num_replicas": trainer.world_size, "rank": trainer.global_rank} if trainer else {}
            sampler = None
            if shuffle and self.group_by_length:
                sampler = LengthGroupedSampler(
                    [len(ids) for ids in data["input_ids"]], self.batch_size, **ranks
                )
            elif shuffle:
                sampler = ShuffleSampler(len(data), **ranks)
            return StatefulDataLoader(
                data, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate
            )
        return DataLoader(
            data,
            batch_size=self.eval_batch_size,
            sampler=LongestFirstSampler([len(ids) for ids in data["input_ids"]]) if longest_first else None,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("fit", shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader, or one per validation split (the first is what ``val/`` scores)."""
        splits = [None, *self.extra_validation_splits.values()]
        loaders = [self.loader("validate", split=split, longest_first=self._whole("val")) for split in splits]
        return loaders if self.extra_validation_splits else loaders[0]

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", longest_first=self._whole("test"))

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict", longest_first=self._whole("predict"))

    def _whole(self, stage: str) -> bool:
        """Does the trainer run all of the split? Then longest first; a part (``limit_val_batches``
        0.1 or 20) stays the file's first rows, not its longest."""
        limit = getattr(getattr(self, "trainer", None), f"limit_{stage}_batches", 1.0)
        return isinstance(limit, float) and limit == 1.0


def _pad(rows: list[list[int]], width: int, value: int = -1) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])
