"""Transfer data for distillation: the loss of a batch mixing labelled and transfer rows against the
formula by hand (sentences, sentence-pair regression, NER words), transfer files (labels ignored,
empty ones refused), the teacher cache over the whole mixed split, exact resume with a transfer set,
and bad input. Tiny models on the embedded demo data."""

import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from datamodules import InputError
from datamodules import demo as demo_data
from lightning_modules import DistillationModule, FineTuneModule
from tests.conftest import ROOT, run_cli
from tests.test_distill import STUDENT, TINY, trainer
from tests.test_distill import datamodule as demo_datamodule
from tests.test_resume import args, assert_same_training, final_state, step_of

KINDS = {  # kind: (the demo task whose rows make transfer files, its DataModule options)
    "sequence": ("sequence", {}),
    "regression": (
        "rating",
        {"dataset_config": "rating", "text_pair_column": "text_pair", "regression": True},
    ),
    "token": ("token", {}),
}


def transfer_file(kind: str, tmp: Path, n: int = 40, labelled: bool = False) -> str:
    """``n`` demo validation rows as a transfer file (labels kept when ``labelled``)."""
    rows = demo_data.demo_split(KINDS[kind][0], "validation")[:n]
    if kind == "sequence" and not labelled:
        path = tmp / "transfer.txt"
        path.write_text("\n".join(r["text"] for r in rows) + "\n")
    elif kind == "token" and not labelled:
        path = tmp / "transfer.conll"
        path.write_text("\n\n".join("\n".join(r["tokens"]) for r in rows) + "\n")
    else:
        path = tmp / "transfer.jsonl"
        rows = [r if labelled else {k: v for k, v in r.items() if k not in ("label", "tags")} for r in rows]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def datamodule(kind: str, cache: Path, **kwargs):
    """The demo data of ``kind``, 96 labelled training rows (``tests/test_distill.py``'s)."""
    return demo_datamodule("token" if kind == "token" else "sequence", cache, **KINDS[kind][1], **kwargs)


@pytest.fixture(scope="module", params=list(KINDS))
def teacher(request, tmp_path_factory) -> tuple[str, Path, str]:
    """(kind, cache dir, a tiny teacher fine-tuned for 4 steps on the demo data of that kind)."""
    kind, tmp = request.param, tmp_path_factory.mktemp(f"transfer-{request.param}")
    L.seed_everything(0)
    dm = datamodule(kind, tmp)
    task = "token" if kind == "token" else "sequence"
    module = FineTuneModule(model_config=TINY, task=task, label_names=dm.label_names, learning_rate=1e-3)
    run = trainer(max_steps=4)
    run.fit(module, dm)
    run.save_checkpoint(tmp / "teacher.ckpt")
    return kind, tmp, str(tmp / "teacher.ckpt")


def by_hand(module, batch, kind: str, alpha: float, temperature: float) -> float:
    """``sum_r (alpha if labelled else 1) * soft_r + (1 - alpha) * [labelled] * hard_r`` over the N
    rows (sentences; for NER, the first sub-token of each word), divided by N."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        t = module.teacher.model(**inputs).logits.double()
        s = module.model(**inputs).logits.double()
    labels, labelled = batch["labels"], batch["labelled"]
    if kind == "token":  # one row per word: its first sub-token
        words = batch["word_ids"]
        first = (words >= 0) & (words != F.pad(words[:, :-1], (1, 0), value=-1))
        row_of = first.nonzero()[:, 0]
        t, s, labels = t[first], s[first], labels[first]
        labelled = labelled[row_of]
    if kind == "regression":
        soft = (s[:, 0] - t[:, 0]) ** 2
        hard = (s[:, 0] - labels.double()) ** 2
    else:
        p_t = (t / temperature).softmax(-1)
        soft = temperature**2 * (
            p_t * ((t / temperature).log_softmax(-1) - (s / temperature).log_softmax(-1))
        ).sum(-1)
        hard = -(s.log_softmax(-1).gather(-1, labels.clamp(min=0)[:, None]))[:, 0]
    weight = torch.where(labelled, alpha, 1.0).double()
    total = (weight * soft).sum() + (1 - alpha) * (hard * labelled).sum()
    return (total / len(soft)).item()


def test_transfer_rows_get_the_soft_loss_only_as_the_formula_says(teacher, tmp_path):
    kind, cache, path = teacher
    dm = datamodule(kind, cache, transfer_files=[transfer_file(kind, tmp_path)])
    train = dm.encoded_split("train")
    assert len(train) == 96 + 40 and sum(train["labelled"]) == 96
    task = "token" if kind == "token" else "sequence"
    module = DistillationModule(
        teacher=path,
        student_config=STUDENT,
        task=task,
        label_names=dm.label_names,
        alpha=0.3,
        temperature=2.0,
    ).eval()  # no dropout: the formula sees the same network
    with torch.no_grad():  # a student far from the teacher: soft losses well above float32 rounding
        for p in module.model.classifier.parameters():
            p.mul_(30)
    rows = [92, 93, 94, 95, 96, 97, 130, 131]  # labelled then transfer rows
    batch = dm.collate([dict(train[i]) for i in rows])
    assert batch["labelled"].tolist() == [True] * 4 + [False] * 4
    losses = module.distillation_losses(batch)
    assert losses["loss"].item() == pytest.approx(by_hand(module, batch, kind, 0.3, 2.0), rel=1e-4)
    # a batch of transfer rows alone: the soft loss, no hard term
    only = dm.collate([dict(train[i]) for i in (100, 101, 102)])
    alone = module.distillation_losses(only)
    assert "ce_loss" not in alone and alone["loss"].item() == pytest.approx(alone["kd_loss"].item(), rel=1e-6)
    assert alone["loss"].item() == pytest.approx(by_hand(module, only, kind, 0.3, 2.0), rel=1e-4)


def test_transfer_file_labels_are_ignored_and_logged_and_bad_files_get_one_line(tmp_path, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        dm = datamodule(
            "sequence", cache, transfer_files=[transfer_file("sequence", tmp_path, labelled=True)]
        )
        rows = dm.raw_split("train")
    assert "has labels; they are ignored" in caplog.text
    assert [r["label"] for r in rows[96:]] == [None] * 40 and all(r["transfer"] for r in rows[96:])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(InputError, match="has no rows"):
        datamodule("sequence", cache, transfer_files=[str(empty)]).raw_split("train")
    with pytest.raises(InputError, match="does not exist"):
        datamodule("sequence", cache, transfer_files=[str(tmp_path / "missing.txt")])
    with pytest.raises(InputError, match="transfer_ratio"):
        datamodule("sequence", cache, transfer_ratio=0)
    # a ratio keeps a fixed sample: 0.25 transfer rows per labelled row
    dm = datamodule(
        "sequence", cache, transfer_files=[transfer_file("sequence", tmp_path)], transfer_ratio=0.25
    )
    assert len(dm.raw_split("train")) == 96 + 24
    # fine-tuning has no teacher to label transfer rows
    with pytest.raises(InputError, match="only a teacher can label"):
        dm.require_labels("fit")


def test_teacher_cache_scores_the_whole_mixed_split_and_equals_the_live_teacher(teacher, tmp_path):
    kind, cache, path = teacher
    if kind != "sequence":
        pytest.skip("one task is enough: the cache is task-generic")
    dm = datamodule(kind, tmp_path / "cache", transfer_files=[transfer_file(kind, tmp_path)])
    losses = {}
    for cached in (False, True):
        L.seed_everything(0)
        module = DistillationModule(
            teacher=path,
            student_config=STUDENT,
            task="sequence",
            label_names=dm.label_names,
            teacher_cache=cached,
        )
        module.teacher.cache_dir = tmp_path / "cache"
        run = trainer(max_steps=3)
        run.fit(module, dm)
        losses[cached] = [p.detach().clone() for p in module.model.parameters()]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(losses[False], losses[True], strict=True))
    (cache_file,) = (tmp_path / "cache" / "teacher").glob("*.pt")
    assert torch.load(cache_file, weights_only=True)["logits"].shape[0] == 96 + 40


def test_a_crash_then_resume_with_a_transfer_set_equals_the_uninterrupted_run(teacher, tmp_path):
    """The shipped distill recipe with a transfer file and augmentation, last.ckpt every 3 steps: a
    crash at step 8 then ``--ckpt_path last`` trains the same batches as the run without the crash."""
    kind, _, path = teacher
    if kind != "sequence":
        pytest.skip("resume is task-generic")
    extra = [
        "--model.init_args.teacher",
        path,
        "--model.init_args.student_config.vocab_size",
        "1000",
        "--data.init_args.transfer_files",
        f"[{transfer_file(kind, tmp_path, n=160)}]",
        "--data.init_args.augment",
        "[mask, swap, ngram]",
        "--data.init_args.transfer_ratio",
        "1",
        "--trainer.max_epochs",
        "1",
    ]
    whole = run_cli("fit", *args("distill", tmp_path, "whole", *extra), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "320 labelled rows, 0 augmented labelled copies, 320 rows for the teacher alone" in whole.stderr
    crash = "--trainer.callbacks+={class_path: tests.test_resume.CrashAtStep, init_args: {step: 8}}"
    crashed = run_cli("fit", *args("distill", tmp_path, "resumed", *extra, crash), cwd=tmp_path)
    assert crashed.returncode == 1 and step_of(tmp_path / "resumed" / "checkpoints" / "last.ckpt") == 6
    resumed = run_cli(
        "fit", *args("distill", tmp_path, "resumed", *extra, "--ckpt_path", "last"), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_training(final_state(tmp_path / "whole"), final_state(tmp_path / "resumed"), steps=20)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--data.init_args.augment_factor", "0"], "data.augment_factor is 0"),
        (["--data.init_args.augment", "[ngram]", "--data.init_args.augment_factor", "-1"], "augment_factor"),
        (["--data.init_args.transfer_files", "[{empty}]"], "has no rows"),
        (["--data.init_args.augment", "[shuffle]"], "not a sequence augmentation"),
        (["--data.init_args.augment", "[mlm]"], "needs a masked language model"),
    ],
)
def test_bad_transfer_input_gets_one_line_and_exit_2(option, message, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    option = [o.format(empty=tmp_path / "empty.txt") for o in option]
    result = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "distill.yaml"),
        "--model.init_args.teacher",
        str(tmp_path / "teacher.ckpt"),
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--out_dir",
        str(tmp_path / "run"),
        *option,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-1500:]
