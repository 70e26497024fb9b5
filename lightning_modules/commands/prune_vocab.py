"""``shrink prune-vocab``: keep the word embeddings of the tokens the training split uses (with its
transfer text, when ``data.transfer_files`` gives one: the student learned those tokens too), checked
on the validation split."""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from datamodules import InputError, datamodule_from_config, parse_overrides
from datamodules.token import word_start_mask
from lightning_modules.artifacts.classifiers import load_trained
from lightning_modules.artifacts.model_folder import (
    model_card,
    parameters_and_bytes,
    save_tokenizer,
    write_model_folder,
)
from lightning_modules.artifacts.onnx_folder import (
    input_names,
    pytorch_logits,
)
from lightning_modules.cpu import cpu_name
from lightning_modules.methods.task_metrics import (
    computed_metrics,
    headline_metric,
    predicted,
    task_metrics,
    update_task_metrics,
)
from lightning_modules.methods.vocabulary import kept_token_ids, prune_vocabulary, pruned_tokenizer


def vocabulary_parity(model, data, smaller, smaller_data, keep: list[int], task: str) -> dict:
    """The pruned model on its own tokenization against the full one on the validation split: the
    task metric of each, label agreement, how many rows tokenize differently, and the largest logit
    difference on rows that tokenize the same (0 up to float order: their ids are only renumbered)."""

    full, pruned = pytorch_logits(model, input_names(model)), pytorch_logits(smaller, input_names(smaller))
    labels = data.label_names
    metrics = {"full": task_metrics(task, labels), "pruned": task_metrics(task, labels)}
    old_ids = torch.tensor(keep)
    agree = total = changed = 0
    same_diff = 0.0
    for a_batch, b_batch in zip(data.loader("validate"), smaller_data.loader("validate"), strict=True):
        a, b = full(a_batch), pruned(b_batch)
        update_task_metrics(metrics["full"], task, labels, predicted(a, labels), a_batch)
        update_task_metrics(metrics["pruned"], task, labels, predicted(b, labels), b_batch)
        for row in range(a.shape[0]):
            ids_a = a_batch["input_ids"][row][a_batch["attention_mask"][row].bool()]
            ids_b = old_ids[b_batch["input_ids"][row][b_batch["attention_mask"][row].bool()]]
            same = ids_a.shape == ids_b.shape and bool((ids_a == ids_b).all())
            changed += not same
            x, y = a[row], b[row]
            if task == "token":  # one prediction per word, in word order, in both tokenizations
                x = x[word_start_mask(a_batch["word_ids"][row : row + 1])[0]]
                y = y[word_start_mask(b_batch["word_ids"][row : row + 1])[0]]
                n = min(len(x), len(y))  # a longer tokenization may truncate more words
                agree += int((x[:n].argmax(-1) == y[:n].argmax(-1)).sum())
                total += len(x)
            else:
                agree += int(x.argmax(-1) == y.argmax(-1))
                total += 1
            if same:
                same_diff = max(same_diff, float((x - y).abs().max()))
    key = headline_metric(task, labels)
    scores = {name: float(computed_metrics(m, "")[key]) for name, m in metrics.items()}
    return {
        "metric": key,
        "full": scores["full"],
        "pruned": scores["pruned"],
        "agreement": agree / max(total, 1),
        "compared": total,
        "rows_tokenized_differently": changed,
        "max_logit_diff_same_tokens": same_diff,
    }


def keep_first_ladder(value: str) -> list[int]:
    """``--keep-first``: N, or N1,N2,... in increasing order (each tried until one passes the check)."""
    try:
        ladder = [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        ladder = []
    if not ladder or min(ladder) < 0 or ladder != sorted(ladder):
        raise InputError(f"--keep-first {value!r} is not N or increasing N1,N2,...: token counts >= 0")
    return ladder


def prune_vocab_command(args: argparse.Namespace) -> None:
    trained = load_trained(args.model)
    if trained.quantization is not None:
        raise InputError(
            f"--model {args.model} is int8: prune the vocabulary of its fp32 model, then quantize"
        )
    if trained.tokenizer is None:
        raise InputError(f"--model {args.model} records no tokenizer: give the model folder a stage wrote")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists: pass --overwrite or another --out")
    ladder = keep_first_ladder(args.keep_first)
    overrides = parse_overrides(args.set)
    data = datamodule_from_config(args.data, {"tokenizer": trained.tokenizer, **overrides})
    data.setup("validate")
    model = trained.model
    train_ids = data.encoded_split(data.splits["fit"])["input_ids"]  # transfer rows included
    transfer_rows = sum(bool(row.get("transfer")) for row in data.raw_split(data.splits["fit"]))
    tried = []
    for keep_first in ladder:  # the smallest vocabulary first; the first that passes is written
        keep = kept_token_ids(data.tokenizer, train_ids, args.min_count, keep_first)
        tokenizer = pruned_tokenizer(data.tokenizer, keep)
        smaller = copy.deepcopy(model)  # the full model stays as the reference
        prune_vocabulary(smaller, keep)
        report = {
            "model": args.model,
            "vocabulary": len(keep),
            "of": len(data.tokenizer),
            "min_count": args.min_count,
            "keep_first": keep_first,
            "training_rows": len(train_ids) - transfer_rows,
            "transfer_rows": transfer_rows,
            "cpu": cpu_name(),
        }
        with tempfile.TemporaryDirectory() as folder:  # the pruned tokenizer, as the datamodule loads one
            save_tokenizer(tokenizer, folder)
            smaller_data = datamodule_from_config(args.data, {"tokenizer": folder, **overrides})
            smaller_data.setup("validate")
            report.update(vocabulary_parity(model, data, smaller, smaller_data, keep, trained.task))
        tried.append({k: report[k] for k in ("keep_first", "vocabulary", "pruned")})
        report["tried"] = tried
        if report["pruned"] >= report["full"] - args.max_drop:
            break
    print(json.dumps(report, indent=1))
    if report["pruned"] < report["full"] - args.max_drop:
        raise InputError(
            f"vocabulary check failed: validation {report['metric']} {report['pruned']:.4f} with the pruned "
            f"vocabulary, {report['full']:.4f} with the full one (more than --max-drop {args.max_drop} lower); "
            f"{out} not written: keep more tokens (--keep-first) or the full vocabulary"
        )
    step = {"stage": "vocabulary pruning", "model": args.model, "kept": len(keep), "of": report["of"]}
    smaller.config.shrink_lineage = [*(getattr(smaller.config, "shrink_lineage", None) or []), step]
    card = model_card(
        title=f"{out.name} (vocabulary pruned)",
        task=trained.task,
        labels=[smaller.config.id2label[i] for i in range(smaller.config.num_labels)],
        facts={"vocabulary": f"{len(keep)} of {report['of']} tokens", **parameters_and_bytes(smaller)},
        metrics={
            f"validation {report['metric']}": report["pruned"],
            f"validation {report['metric']}, full vocabulary": report["full"],
            **{k: report[k] for k in ("agreement", "rows_tokenized_differently")},
        },
        lineage=smaller.config.shrink_lineage,
        command="shrink export " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    write_model_folder(smaller, tokenizer, out, card)
    print(f"wrote {out}: {len(keep)} of {report['of']} tokens")
