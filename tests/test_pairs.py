"""Sentence pairs: the pair encoding and its truncation for two tokenizers, word ids that line up
the same example across tokenizers, each of several validation splits scored apart (MNLI), and the
demo pair task through fine-tuning, cross-tokenizer distillation, ONNX export, raw-text prediction,
pruning and the benchmark (QAT and int8 export of pairs: test_regression)."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules import InputError, SequenceClassificationDataModule
from lightning_modules import FineTuneModule
from lightning_modules.methods.losses import per_word
from tests.conftest import ROOT, run_cli, run_script
from tests.test_distill import TINY, other_tokenizer, trainer


def pair_data(tmp_path, **kwargs) -> SequenceClassificationDataModule:
    return SequenceClassificationDataModule(
        dataset="demo",
        dataset_config="pairs",
        text_pair_column="text_pair",
        tokenizer="demo",
        cache_dir=str(tmp_path / "cache"),
        max_train_samples=64,
        max_eval_samples=32,
        batch_size=8,
        **kwargs,
    )


def test_pair_encoding_and_longest_first_truncation_for_two_tokenizers(tmp_path):
    rows = [{"text": "the movie was not good , but the cast felt warm .", "text_pair": "the plot is bad ."}]
    for name in ("demo", other_tokenizer(tmp_path / "tok")):
        dm = SequenceClassificationDataModule(
            tokenizer=name, text_pair_column="text_pair", max_length=64, cache_dir=str(tmp_path / "cache")
        )
        tok = dm.tokenizer
        encoded = dm.tokenize(
            tok, {"text": [r["text"] for r in rows], "text_pair": [r["text_pair"] for r in rows]}
        )
        ids = encoded["input_ids"][0]
        first = tok(rows[0]["text"], add_special_tokens=False)["input_ids"]
        second = tok(rows[0]["text_pair"], add_special_tokens=False)["input_ids"]
        assert ids == [tok.cls_token_id, *first, tok.sep_token_id, *second, tok.sep_token_id]
        assert encoded["token_type_ids"][0] == [0] * (len(first) + 2) + [1] * (len(second) + 1)
        # words of the second text are numbered after the first text's 12
        assert max(encoded["word_ids"][0]) == 12 + 5 - 1 and encoded["word_ids"][0][len(first) + 2] == 12
        # longest_first: the longer text loses tokens until the pair fits
        dm.max_length = len(second) + 3 + 5
        short = dm.tokenize(tok, {"text": [rows[0]["text"]], "text_pair": [rows[0]["text_pair"]]})
        assert short["input_ids"][0] == [
            tok.cls_token_id,
            *first[:5],
            tok.sep_token_id,
            *second,
            tok.sep_token_id,
        ]
        assert short["truncated"] == [True]


def test_cross_tokenizer_pairs_line_up_the_same_example(tmp_path):
    dm = pair_data(tmp_path, teacher_tokenizer=other_tokenizer(tmp_path / "tok"))
    rows = dm.encoded_split("train")
    batch = dm.collate([dict(rows[i]) for i in range(8)])
    n_words = int(batch["word_ids"].max()) + 1
    student, s_present = per_word(batch["input_ids"], batch["word_ids"], n_words)
    teacher, t_present = per_word(batch["teacher_input_ids"], batch["teacher_word_ids"], n_words)
    assert torch.equal(s_present, t_present)
    for row in range(8):
        raw = dm.raw_split("train")[int(batch["idx"][row])]
        split = dm.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str  # words as both models see them
        words = [w for w, _ in split(raw["text"]) + split(raw["text_pair"])]
        assert int(s_present[row].sum()) == len(words)
        for w, word in enumerate(words):
            assert word.startswith(dm.tokenizer.convert_ids_to_tokens(int(student[row, w])))
            assert word.lower().startswith(dm.teacher_tokenizer.convert_ids_to_tokens(int(teacher[row, w])))
    # both models see token types 0 then 1
    assert batch["token_type_ids"].max() == 1 and batch["teacher_token_type_ids"].max() == 1


def test_each_validation_split_is_scored_apart_like_mnli_matched_and_mismatched(tmp_path):
    """``validation_split: [a, b]``: ``val/`` scores a, ``val_b/`` scores b, each equal to the split's
    accuracy and cross-entropy computed by hand from the trained model's logits."""
    dm = pair_data(tmp_path, validation_split=["validation", "test"], eval_batch_size=16)
    torch.manual_seed(0)
    module = FineTuneModule(
        model_config=TINY, task="sequence", label_names=dm.label_names, learning_rate=1e-3
    )
    run = trainer(
        max_steps=8, limit_val_batches=None
    )  # 64 rows / 8 = 8 steps: one epoch, validated at its end
    run.fit(module, dm)
    logged = {k: float(v) for k, v in run.callback_metrics.items()}
    module.eval()
    for prefix, split in (("val", "validation"), ("val_test", "test")):
        batch = dm.collate([dict(row) for row in dm.encoded_split(split)])
        with torch.no_grad():
            logits = module(batch).logits
        accuracy = float((logits.argmax(-1) == batch["labels"]).float().mean())
        assert logged[f"{prefix}/accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert logged[f"{prefix}/loss"] == pytest.approx(
            float(torch.nn.functional.cross_entropy(logits, batch["labels"])), abs=1e-5
        )
    assert logged["val/loss"] != logged["val_test/loss"]
    with pytest.raises(InputError, match="validation_split is .*distinct"):
        pair_data(tmp_path, validation_split=["validation", "validation"])


def test_an_empty_second_text_is_one_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("premise\thypothesis\tlabel\na film\tgood\tentailment\nthe plot\t \tcontradiction\n")
    dm = SequenceClassificationDataModule(
        data_files={"train": str(path)},
        text_column="premise",
        text_pair_column="hypothesis",
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(Exception, match="row 2 has an empty 'hypothesis'"):
        dm.raw_split("train")
    dm = SequenceClassificationDataModule(
        data_files={"train": str(path)},
        text_column="premise",
        text_pair_column="claim",
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(Exception, match="no text column 'claim'.*set data.text_pair_column"):
        dm.raw_split("train")


def test_demo_pairs_fine_tune_distill_across_tokenizers_export_classify_prune_and_benchmark(tmp_path, capsys):
    common = [
        "--data.init_args.max_train_samples",
        "128",
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    teacher = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/demo-pair/finetune.yaml"),
        *common,
        "--trainer.max_epochs",
        "1",
        "--out_dir",
        str(tmp_path / "teacher"),
        cwd=tmp_path,
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    teacher_ckpt = str(tmp_path / "teacher" / "checkpoints" / "last.ckpt")
    # the student tokenizes with its own (lowercasing) WordPiece; the teacher keeps the demo one
    student = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/demo-pair/distill.yaml"),
        *common,
        "--model.init_args.teacher",
        teacher_ckpt,
        "--data.init_args.tokenizer",
        other_tokenizer(tmp_path / "tok"),
        "--data.init_args.teacher_tokenizer",
        "demo",
        "--model.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--model.init_args.student_config",
        "{model_type: bert, vocab_size: 300, hidden_size: 64, num_hidden_layers: 2, "
        "num_attention_heads: 4, intermediate_size: 256, max_position_embeddings: 128}",
        "--trainer.max_epochs",
        "1",
        "--out_dir",
        str(tmp_path / "student"),
        cwd=tmp_path,
    )
    assert student.returncode == 0, student.stderr[-3000:]
    out = tmp_path / "onnx"  # fp32: int8 export of pairs is the rating test's
    export = run_script(
        "export.py",
        "onnx",
        "--model",
        str(tmp_path / "teacher" / "model"),
        "--out",
        str(out),
        "--data",
        str(ROOT / "configs/demo-pair/qat.yaml"),
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        "max_eval_samples=64",
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["agreement"] == 1.0 and parity["max_logit_diff"] < 1e-4, (
        parity
    )  # token types go through the graph
    from lightning_modules.commands.classify import main as classify

    capsys.readouterr()
    review, claim = "the movie was not good .", "the plot is bad ."
    outputs = {}
    for model in (tmp_path / "teacher" / "model", out):
        classify([str(model), "--pair", f"{review}\t{claim}"])
        outputs[model] = json.loads(capsys.readouterr().out.strip())
        assert outputs[model]["text"] == review and outputs[model]["text_pair"] == claim
        assert outputs[model]["label"] in ("same_subject", "other_subject")
    # pruning takes pairs too (self-distilled: the unpruned teacher teaches), and the benchmark times
    # real pair lengths: the fp32 ONNX folder scores what the PyTorch teacher scores
    pruned = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/demo-sequence/prune.yaml"),
        "--data",
        str(ROOT / "configs/demo-pair/data.yaml"),
        *common,
        "--model.init_args.model_name_or_path",
        teacher_ckpt,
        "--model.init_args.teacher",
        "null",
        "--model.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_epochs",
        "4",
        "--out_dir",
        str(tmp_path / "pruned"),
        cwd=tmp_path,
    )
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    bench = tmp_path / "bench"
    result = run_script(
        "benchmark.py",
        "--model",
        f"teacher={tmp_path / 'teacher' / 'model'}",
        "--model",
        f"onnx={out}",
        "--model",
        f"pruned={tmp_path / 'pruned' / 'model'}",
        "--data",
        str(ROOT / "configs/demo-pair/qat.yaml"),
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--max-eval-samples",
        "64",
        "--out",
        str(bench),
        "--latency-samples",
        "8",
        "--long-repeats",
        "2",
        "--throughput-batches",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    teacher_row, onnx_row, pruned_row = json.loads((bench / "benchmark.json").read_text())["rows"]
    assert (
        onnx_row["accuracy"] == teacher_row["accuracy"] and pruned_row["params_m"] < teacher_row["params_m"]
    )
