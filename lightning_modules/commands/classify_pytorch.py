"""``shrink classify``'s PyTorch side: a model folder or a ``.ckpt`` with its Hugging Face tokenizer
(an ONNX folder runs without torch: ``classify.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from datamodules.demo import demo_tokenizer
from datamodules.errors import InputError
from lightning_modules.artifacts.classifiers import load_trained
from lightning_modules.artifacts.onnx_folder import input_names, pytorch_logits


def pytorch_classifier(path: str, threads: int) -> tuple[Any, str, list[str], Any]:
    """``(run, task, labels, tokenizer)``: ``run(batch) -> logits`` on ``threads`` threads (the caller's
    count restored after each call), ``tokenizer(texts, pairs, max_length, offsets)`` as
    ``classify.FolderTokenizer``."""
    trained = load_trained(path, role="model")
    model, task = trained.model, trained.task
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if trained.tokenizer is None:
        raise InputError(f"model {path} records no tokenizer: use a model folder or a recent .ckpt")
    if trained.tokenizer == "demo":
        tokenizer = demo_tokenizer("~/.cache/shrink")
    else:
        tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer)
    logits = pytorch_logits(model, input_names(model))

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return logits({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
        finally:
            torch.set_num_threads(before)

    def encode(texts: list[str], pairs: list[str] | None, max_length: int, offsets: bool):
        encoding = tokenizer(
            texts,
            pairs,
            padding=True,
            truncation=True,
            max_length=min(max_length, tokenizer.model_max_length),
            return_offsets_mapping=offsets,
            return_tensors="np",
        )
        batch = {k: v.astype(np.int64) for k, v in encoding.items() if k != "offset_mapping"}
        if not offsets:
            return batch, None, None
        rows = range(len(texts))
        return batch, [encoding.word_ids(r) for r in rows], encoding["offset_mapping"].tolist()

    return run, task, labels, encode
