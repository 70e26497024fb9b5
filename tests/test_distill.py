"""Distillation: loss formulas, the frozen teacher, cross-tokenizer alignment, the teacher cache,
student initialisation and loading, bad input. In-process Trainer runs on tiny models (CPU)."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import InputError, SequenceClassificationDataModule, TokenClassificationDataModule
from lightning_modules import DistillationModule, FineTuneModule
from lightning_modules.methods.losses import kd_loss, per_word
from tests.conftest import ROOT, run_cli

TINY = {
    "model_type": "bert",
    "vocab_size": 1000,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
STUDENT = dict(TINY, hidden_size=16, num_hidden_layers=2)


def datamodule(task: str, cache: Path, **kwargs):
    cls = SequenceClassificationDataModule if task == "sequence" else TokenClassificationDataModule
    return cls(
        tokenizer="demo",
        cache_dir=str(cache),
        max_train_samples=96,
        max_eval_samples=32,
        batch_size=16,
        **kwargs,
    )


def trainer(**kwargs) -> L.Trainer:
    options = {
        "max_steps": 4,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
    }
    return L.Trainer(**(options | kwargs))


def fine_tuned_checkpoint(task: str, tmp: Path, model_config: dict = TINY, steps: int = 4) -> str:
    """A tiny model fine-tuned for ``steps`` on the demo data of ``task``, saved as ``tmp/model.ckpt``."""
    L.seed_everything(0)
    dm = datamodule(task, tmp)
    module = FineTuneModule(
        model_config=model_config, task=task, label_names=dm.label_names, learning_rate=1e-3
    )
    run = trainer(max_steps=steps)
    run.fit(module, dm)
    run.save_checkpoint(tmp / "model.ckpt")
    return str(tmp / "model.ckpt")


@pytest.fixture(scope="module", params=["sequence", "token"])
def teacher(request, tmp_path_factory) -> tuple[str, Path, str]:
    """(task, cache dir, path of a tiny fine-tuned teacher checkpoint)."""
    task, tmp = request.param, tmp_path_factory.mktemp(f"teacher-{request.param}")
    return task, tmp, fine_tuned_checkpoint(task, tmp)


# --- loss formulas --------------------------------------------------------------------------
def test_kd_loss_matches_the_formula_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 3.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        s_exp = [math.exp(v / T) for v in s_row]
        t_exp = [math.exp(v / T) for v in t_row]
        p = [v / sum(t_exp) for v in t_exp]
        q = [v / sum(s_exp) for v in s_exp]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = T**2 * expected / 2
    assert kd_loss(student, teacher, T).item() == pytest.approx(expected, rel=1e-5)
    # masking: only the second row counts
    mask = torch.tensor([False, True])
    assert kd_loss(student, teacher, T, mask).item() == pytest.approx(
        kd_loss(student[1:], teacher[1:], T).item(), rel=1e-6
    )
    assert kd_loss(teacher, teacher, T).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("teacher", ["token"], indirect=True)
def test_token_kd_masks_padding_and_continuation_subtokens(teacher):
    task, cache, path = teacher
    dm = datamodule("token", cache)
    module = DistillationModule(
        teacher=path,
        student_config=STUDENT,
        task="token",
        label_names=dm.label_names,
        alpha=0.3,
        temperature=2.0,
    )
    module.eval()
    batch = dm.collate([dict(dm.encoded_split("train")[i]) for i in range(4)])
    losses = module.distillation_losses(batch)
    with torch.no_grad():
        s = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = module.teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    first = batch["labels"] != -100  # first sub-tokens of words: no padding, no specials, no continuations
    expected_kd = kd_loss(s[first], t[first], 2.0)
    expected_ce = torch.nn.functional.cross_entropy(s[first], batch["labels"][first])
    assert losses["kd_loss"].item() == pytest.approx(expected_kd.item(), rel=1e-5)
    assert losses["ce_loss"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(
        0.3 * expected_kd.item() + 0.7 * expected_ce.item(), rel=1e-5
    )


# --- the frozen teacher ---------------------------------------------------------------------
def test_teacher_frozen_not_optimized_not_checkpointed_and_student_loads_alone(teacher, tmp_path):
    task, cache, path = teacher
    dm = datamodule(task, cache)
    module = DistillationModule(
        teacher=path,
        student_config=STUDENT,
        task=task,
        label_names=dm.label_names,
        hidden_weight=1.0,
        learning_rate=1e-3,
    )
    before = {k: v.clone() for k, v in module.teacher.model.state_dict().items()}
    run = trainer()
    run.fit(module, dm)
    after = module.teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not module.teacher.model.training
    optimized = {id(p) for group in run.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in module.teacher.model.parameters()}
    assert {id(p) for p in module.projections.parameters()} <= optimized  # 16 -> 32 projections are trained

    student_ckpt = tmp_path / "student.ckpt"
    run.save_checkpoint(student_ckpt)
    state = torch.load(student_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not any("teacher" in k for k in state)
    assert sum(v.numel() for k, v in state.items() if k.startswith("model.")) == sum(
        p.numel() for p in module.model.parameters()
    )
    # the student checkpoint loads and predicts without the teacher
    alone = FineTuneModule(model_name_or_path=str(student_ckpt), task=task, label_names=dm.label_names).eval()
    module.eval()
    batch = dm.collate([dict(dm.encoded_split("validation")[i]) for i in range(4)])
    with torch.no_grad():
        assert torch.allclose(alone(batch).logits, module(batch).logits)


# --- cross-tokenizer alignment --------------------------------------------------------------
def other_tokenizer(folder: Path, vocab_size: int = 300) -> str:
    """A lowercasing WordPiece with its own vocabulary and special-token ids (unlike the demo's)."""
    from datamodules.demo import demo_texts, train_wordpiece

    train_wordpiece(
        demo_texts(),
        folder,
        vocab_size=vocab_size,
        lowercase=True,
        special_tokens=("[UNK]", "[MASK]", "[SEP]", "[PAD]", "[CLS]"),
    )
    return str(folder)


def test_cross_tokenizer_alignment_lines_up_words(tmp_path):
    dm = datamodule("token", tmp_path, teacher_tokenizer=other_tokenizer(tmp_path / "tok"))
    rows = dm.encoded_split("train")
    batch = dm.collate([dict(rows[i]) for i in range(8)])
    assert batch["teacher_input_ids"].shape[0] == 8 and "teacher_word_ids" in batch
    assert dm.teacher_tokenizer.pad_token_id != dm.tokenizer.pad_token_id
    n_words = int(batch["word_ids"].max()) + 1
    # gather each sub-token's text at word starts in both tokenizations: words must agree
    student_ids, s_present = per_word(batch["input_ids"], batch["word_ids"], n_words)
    teacher_ids, t_present = per_word(batch["teacher_input_ids"], batch["teacher_word_ids"], n_words)
    assert torch.equal(s_present, t_present)
    for row in range(8):
        words = dm.raw_split("train")[int(batch["idx"][row])]["tokens"]
        for w in range(len(words)):
            s_piece = dm.tokenizer.convert_ids_to_tokens(int(student_ids[row, w]))
            t_piece = dm.teacher_tokenizer.convert_ids_to_tokens(int(teacher_ids[row, w]))
            assert words[w].startswith(s_piece) and words[w].lower().startswith(t_piece), (
                words[w],
                s_piece,
                t_piece,
            )
    assert (teacher_ids != student_ids)[s_present].any()  # really two vocabularies


# --- teacher cache --------------------------------------------------------------------------
def test_cached_and_live_teacher_give_the_same_loss(teacher, caplog):
    task, cache, path = teacher
    dm = datamodule(task, cache)
    modules = []
    for use_cache in (False, True):
        L.seed_everything(1)
        module = DistillationModule(
            teacher=path,
            student_config=STUDENT,
            task=task,
            label_names=dm.label_names,
            teacher_cache=use_cache,
            cache_dir=str(cache),
        )
        trainer(max_steps=1).fit(module, dm)
        modules.append(module.eval())
    modules[1].model.load_state_dict(modules[0].model.state_dict())
    assert modules[1].teacher._logits is not None and modules[0].teacher._logits is None
    for start in (0, 40):
        batch = dm.collate([dict(dm.encoded_split("train")[i]) for i in range(start, start + 16)])
        # the cached teacher logits are the live ones (the cache was built from batches padded to
        # other lengths, so they may differ in float rounding only)
        with torch.no_grad():
            n = int(batch["word_ids"].max()) + 1
            live_logits, live_present = modules[0].teacher.logits(batch, n)
        cached_logits = modules[1].teacher._logits["logits"][batch["idx"]]
        if task == "token":
            cached_logits = cached_logits[:, :n][live_present]
            live_logits = live_logits[live_present]
        torch.testing.assert_close(cached_logits, live_logits.float(), atol=1e-6, rtol=0)
        live, cached = (m.distillation_losses(batch) for m in modules)
        # the KL of these near-uniform tiny models is ~2.5e-5, so 1e-7 of logit rounding (above)
        # moves it by ~1e-8: relative 1e-5, or 5e-8 absolute
        assert cached["kd_loss"].item() == pytest.approx(live["kd_loss"].item(), rel=1e-5, abs=5e-8)
    # another teacher (changed weights) gets another key: the cache is rebuilt, not reused
    caplog.clear()
    other = DistillationModule(
        teacher=path,
        student_config=STUDENT,
        task=task,
        label_names=dm.label_names,
        teacher_cache=True,
        cache_dir=str(cache),
    )
    with torch.no_grad():
        next(other.teacher.model.parameters()).add_(1.0)
    trainer(max_steps=1).fit(other, dm)
    assert "building" in caplog.text


def test_teacher_cache_with_a_teacher_tokenizer_that_keeps_fewer_words(tmp_path):
    """A teacher tokenizer with a small vocabulary splits words into more pieces, so after truncation
    it keeps fewer words than the student's: the cached logits end early and those words have no
    soft target (as with the live teacher), instead of a shape error."""
    tok = other_tokenizer(tmp_path / "tok", vocab_size=150)  # little more than characters: many pieces
    L.seed_everything(0)
    options = {"max_length": 12, "cache_dir": str(tmp_path), "max_train_samples": 96, "max_eval_samples": 32}
    own = TokenClassificationDataModule(tokenizer=tok, batch_size=16, **options)
    teacher = FineTuneModule(model_config=TINY, task="token", label_names=own.label_names, learning_rate=1e-3)
    run = trainer()
    run.fit(teacher, own)
    run.save_checkpoint(tmp_path / "teacher.ckpt")
    dm = TokenClassificationDataModule(tokenizer="demo", teacher_tokenizer=tok, batch_size=16, **options)
    modules = []
    for use_cache in (False, True):
        L.seed_everything(1)
        module = DistillationModule(
            teacher=str(tmp_path / "teacher.ckpt"),
            student_config=STUDENT,
            task="token",
            label_names=dm.label_names,
            teacher_cache=use_cache,
            cache_dir=str(tmp_path),
        )
        trainer(max_steps=2).fit(module, dm)
        modules.append(module.eval())
    data = dm.encoded_split("train")
    fewer = [i for i in range(len(data)) if max(data[i]["teacher_word_ids"]) < max(data[i]["word_ids"])]
    assert fewer  # the case under test occurs
    modules[1].model.load_state_dict(modules[0].model.state_dict())
    batch = dm.collate([dict(data[i]) for i in fewer[:16]])
    live, cached = (m.distillation_losses(batch) for m in modules)
    assert cached["kd_loss"].item() == pytest.approx(live["kd_loss"].item(), rel=1e-5)
    # by hand: only the words both tokenizers kept (the teacher-presence mask) carry the soft loss
    with torch.no_grad():
        module = modules[0]
        n = int(max(batch["word_ids"].max(), batch["teacher_word_ids"].max())) + 1
        s, s_ok = per_word(module(batch).logits, batch["word_ids"], n)
        t, t_ok = per_word(
            module.teacher.model(**module.teacher.inputs(batch)).logits, batch["teacher_word_ids"], n
        )
    assert (s_ok & ~t_ok).any()  # words only the student kept
    expected = kd_loss(s[s_ok & t_ok], t[s_ok & t_ok], module.teacher.temperature)
    assert cached["kd_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(s[s_ok], t[s_ok], module.teacher.temperature).item() != pytest.approx(
        expected.item(), rel=1e-3
    )


# --- student initialisation -----------------------------------------------------------------
def test_student_layers_copy_the_chosen_teacher_layers(teacher):
    task, cache, path = teacher
    dm = datamodule(task, cache)
    module = DistillationModule(teacher=path, student_layers=[0, 2], task=task, label_names=dm.label_names)
    student, source = module.model.base_model.encoder.layer, module.teacher.model.base_model.encoder.layer
    assert len(student) == 2 and module.model.config.num_hidden_layers == 2
    for kept, original in ((0, 0), (1, 2)):
        for (name, a), (_, b) in zip(
            student[kept].state_dict().items(), source[original].state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    assert not any(
        p is q for p in module.model.parameters() for q in module.teacher.model.parameters()
    )  # a copy


# --- bad input ------------------------------------------------------------------------------
def test_bad_input(teacher):
    task, cache, path = teacher
    names = datamodule(task, cache).label_names
    with pytest.raises(InputError, match=r"teacher labels \[.*\] differ from the data's labels \['x', 'y'\]"):
        DistillationModule(teacher=path, student_config=STUDENT, task=task, label_names=["x", "y"])
    other = "token" if task == "sequence" else "sequence"
    with pytest.raises(InputError, match=f"is a {task}-classification model but the data is {other}"):
        DistillationModule(teacher=path, student_config=STUDENT, task=other, label_names=names)
    with pytest.raises(InputError, match="layer_map 7: 2 names a layer that does not exist"):
        DistillationModule(
            teacher=path,
            student_config=STUDENT,
            task=task,
            label_names=names,
            hidden_weight=1.0,
            layer_map={7: 2},
        )
    with pytest.raises(InputError, match="does not exist"):
        DistillationModule(teacher="/no/such.ckpt", student_config=STUDENT, task=task, label_names=names)


# --- the CLI --------------------------------------------------------------------------------
def test_distill_via_cli(teacher, tmp_path):
    task, cache, path = teacher
    args = [
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / "distill.yaml"),
        "--model.init_args.teacher",
        path,
        "--model.init_args.student_config",
        str(STUDENT).replace("'", ""),
        "--data.init_args.max_train_samples",
        "64",
        "--data.init_args.max_eval_samples",
        "32",
        "--data.init_args.cache_dir",
        str(cache),
        "--model.init_args.cache_dir",
        str(cache),
        "--out_dir",
        str(tmp_path / "run"),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    result = run_cli("fit", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    args = [*args, "--overwrite", "true"]  # the bad inputs below, into the folder of the run above
    result = run_cli("fit", *args, "--model.init_args.student_layers", "[9]", cwd=tmp_path)
    assert result.returncode == 2 and "student_layers [9] names layers outside 0..1" in result.stderr
    # the teacher was fine-tuned on the demo tokenizer: tokenizing for it with another is refused
    result = run_cli(
        "fit", *args, "--data.init_args.teacher_tokenizer", other_tokenizer(tmp_path / "tok"), cwd=tmp_path
    )
    assert result.returncode == 2 and "the teacher was fine-tuned with tokenizer 'demo'" in result.stderr, (
        result.stderr[-2000:]
    )


def test_hidden_and_attention_losses_by_hand():
    from lightning_modules.methods.losses import attention_loss, hidden_state_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    projection = torch.nn.ModuleList([torch.nn.Linear(4, 6)])
    words = torch.tensor([[True, True, False], [True, False, False]])
    expected = sum(
        ((projection[0](student[b, p]) - teacher[b, p]) ** 2).sum() for b, p in words.nonzero()
    ) / (3 * 6)
    assert hidden_state_loss([student], [teacher], projection, words).item() == pytest.approx(
        expected.item(), rel=1e-5
    )

    s, t = torch.rand(2, 2, 3, 3).softmax(-1), torch.rand(2, 2, 3, 3).softmax(-1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    total, count = 0.0, 0
    for b in range(2):
        for h in range(2):
            for q in range(3):
                for k in range(3):
                    if mask[b, q] and mask[b, k]:
                        total += (s[b, h, q, k] - t[b, h, q, k]).item() ** 2
                        count += 1
    assert attention_loss([s], [t], mask).item() == pytest.approx(total / count, rel=1e-5)


def test_hidden_and_attention_transfer_run_with_a_layer_subset_student(teacher):
    task, cache, path = teacher
    dm = datamodule(task, cache)
    module = DistillationModule(
        teacher=path,
        student_layers=[1, 3],
        task=task,
        label_names=dm.label_names,
        hidden_weight=1.0,
        attention_weight=1.0,
    )
    assert module.teacher.layer_map == {1: 2, 2: 4}  # student i <- teacher round(i * 4 / 2)
    batch = dm.collate([dict(dm.encoded_split("train")[i]) for i in range(4)])
    losses = module.distillation_losses(batch)
    assert set(losses) == {"kd_loss", "ce_loss", "hidden_loss", "attention_loss", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert module.model.base_model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_unlabelled_transfer_data_uses_the_soft_loss_alone(teacher, tmp_path):
    task, cache, path = teacher
    dm = datamodule(task, cache)
    module = DistillationModule(
        teacher=path, student_config=STUDENT, task=task, label_names=dm.label_names, alpha=0.3
    ).eval()  # no dropout: the two calls see the same network
    batch = dm.collate([dict(dm.encoded_split("train")[i]) for i in range(4)])
    labelled = module.distillation_losses(batch)
    batch.pop("labels")
    unlabelled = module.distillation_losses(batch)
    assert set(unlabelled) == {"kd_loss", "loss"} and "ce_loss" in labelled
    assert unlabelled["loss"].item() == pytest.approx(unlabelled["kd_loss"].item())
    assert unlabelled["kd_loss"].item() == pytest.approx(labelled["kd_loss"].item(), rel=1e-5)


def test_save_teacher_stores_the_teacher_only_when_asked(teacher, tmp_path):
    task, cache, path = teacher
    dm = datamodule(task, cache)
    for save in (False, True):
        module = DistillationModule(
            teacher=path, student_config=STUDENT, task=task, label_names=dm.label_names, save_teacher=save
        )
        checkpoint = {}
        module.on_save_checkpoint(checkpoint)
        assert ("teacher_state_dict" in checkpoint) == save
