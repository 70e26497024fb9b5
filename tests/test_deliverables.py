"""What leaves the tool: each fit writes a Hugging Face model folder that ``transformers.pipeline``
loads without this project and that predicts what ``shrink predict`` predicts; checkpoints carry
their tokenizer, so a moved ``.ckpt`` still exports, benchmarks and teaches; ONNX folders with their
config, tokenizer and card; ``shrink-classify`` on raw text; and the Hub push failing cleanly offline.
The CLI and scripts run in-process (their ``main(args)``), the pipeline check in a clean subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from datamodules.demo import demo_split, demo_tokenizer
from lightning_modules.commands import benchmark, export
from lightning_modules.commands.classify import FolderTokenizer, entities, word_spans
from lightning_modules.commands.classify import main as classify_main
from lightning_modules.cpu import has_int8_dot
from lightning_modules.train import cli
from tests.conftest import ENV, ROOT, run_cli, run_script


def csv_only(tmp: Path) -> str:
    path = tmp / "csv.yaml"
    path.write_text(
        f"trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
        f"    init_args: {{save_dir: {tmp / 'csv'}}}\n"
    )
    return str(path)


def fit_args(task: str, tmp: Path, tokenizer: str, *extra: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / "finetune.yaml"),
        "--config",
        csv_only(tmp),
        "--data.init_args.tokenizer",
        tokenizer,
        "--data.init_args.max_train_samples",
        "640",
        "--data.init_args.max_eval_samples",
        "96",
        "--data.init_args.cache_dir",
        str(tmp / "cache"),
        "--out_dir",
        str(tmp / "run"),
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


@pytest.fixture(scope="module", params=["sequence", "token"])
def fitted(request, tmp_path_factory) -> tuple[str, Path, list[str]]:
    """A 2-epoch demo fine-tune (in-process) whose tokenizer lives in a folder of its own."""
    task, tmp = request.param, tmp_path_factory.mktemp(request.param)
    demo_tokenizer(tmp / "cache").save_pretrained(tmp / "tokenizer")
    args = fit_args(task, tmp, str(tmp / "tokenizer"))
    cli.main(["fit", *args])
    return task, tmp, args


def test_fit_writes_a_model_folder_with_a_card(fitted):
    task, tmp, _ = fitted
    folder = tmp / "run" / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= names, names
    config = json.loads((folder / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert labels == (["negative", "positive"] if task == "sequence" else labels) and config["label2id"]
    card = (folder / "README.md").read_text()
    metric = "val/accuracy" if task == "sequence" else "val/f1"
    assert f"| {metric} |" in card and "FineTuneModule" in card and "shrink fit" in card
    assert "max_train_samples: 640" in card  # the resolved config


PIPELINE = """
import json, sys
from transformers import AutoTokenizer, pipeline
folder, task, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = []
if task == "sequence":
    out = [r["label"] for r in pipeline("text-classification", model=folder)(rows)]
else:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tagger = pipeline("token-classification", model=folder)
    for words in rows:
        found = {e["index"]: e["entity"] for e in tagger(" ".join(words))}
        encoding = tokenizer(" ".join(words))
        first = {}
        for position, word in enumerate(encoding.word_ids()):
            if word is not None and word not in first:
                first[word] = position
        out.append([found.get(first[w], "O") for w in range(len(words))])
assert not [m for m in sys.modules if m.split(".")[0] in ("lightning_modules", "datamodules", "lightning")]
print(json.dumps(out))
"""


@pytest.mark.slow  # a process of its own: transformers without shrink imported
def test_pipeline_loads_the_folder_without_shrink_and_predicts_like_shrink_predict(fitted):
    task, tmp, args = fitted
    cli.main(["predict", *args, "--ckpt_path", "best"])
    predicted = [json.loads(line) for line in (tmp / "run" / "predictions.jsonl").read_text().splitlines()]
    rows = demo_split(task, "test")[: len(predicted)]
    inputs = [r["text"] for r in rows] if task == "sequence" else [r["tokens"] for r in rows]
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE, str(tmp / "run" / "model"), task, json.dumps(inputs)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from_pipeline = json.loads(result.stdout.strip().splitlines()[-1])
    expected = [p["label"] if task == "sequence" else p["labels"] for p in predicted]
    assert len(expected) == 96 and from_pipeline == expected


def test_a_moved_checkpoint_exports_benchmarks_and_teaches_without_its_tokenizer_folder(fitted, capsys):
    task, tmp, args = fitted
    moved = tmp / "elsewhere" / "teacher.ckpt"
    moved.parent.mkdir(exist_ok=True)
    shutil.copy(tmp / "run" / "checkpoints" / "last.ckpt", moved)
    shutil.move(tmp / "tokenizer", tmp / "tokenizer.gone")  # the path the checkpoint was trained with
    try:
        config = str(ROOT / "configs" / f"demo-{task}" / "qat.yaml")
        cache = f"cache_dir={tmp / 'cache'}"
        onnx = tmp / "elsewhere" / "onnx"
        export.main(
            [
                "onnx",
                "--model",
                str(moved),
                "--out",
                str(onnx),
                "--data",
                config,
                "--set",
                cache,
                "--set",
                "max_eval_samples=64",
            ]
        )
        assert (onnx / "model.onnx").is_file() and (onnx / "tokenizer.json").is_file()
        benchmark.main(
            [
                "--data",
                config,
                "--set",
                cache,
                "--out",
                str(tmp / "bench"),
                "--max-eval-samples",
                "64",
                "--latency-samples",
                "5",
                "--long-repeats",
                "2",
                "--throughput-batches",
                "1",
                "--model",
                f"moved={moved}",
                "--model",
                f"onnx={onnx}",
            ]
        )
        rows = json.loads((tmp / "bench" / "benchmark.json").read_text())["rows"]
        assert [r["runtime"] for r in rows] == ["pytorch", "onnxruntime"] and rows[1]["retention"] == 1.0
        # the model folder scored by the benchmark equals the score its card records (both fp32 here;
        # benchmark.md says why a bf16-trained card may differ in the last digits)
        benchmark.main(
            [
                "--data",
                config,
                "--set",
                cache,
                "--out",
                str(tmp / "bench_folder"),
                "--max-eval-samples",
                "96",
                "--latency-samples",
                "2",
                "--long-repeats",
                "1",
                "--throughput-batches",
                "1",
                "--model",
                f"folder={tmp / 'run' / 'model'}",
            ]
        )
        row = json.loads((tmp / "bench_folder" / "benchmark.json").read_text())["rows"][0]
        metric = "accuracy" if task == "sequence" else "f1"
        card = (tmp / "run" / "model" / "README.md").read_text()
        assert row[metric] == pytest.approx(
            float(card.split(f"| val/{metric} | ")[1].split(" |")[0]), abs=1e-4
        )
        assert "training precision" in (tmp / "bench_folder" / "benchmark.md").read_text()
        # distill from the moved teacher with the same vocabulary under another name ("demo")
        distill = [
            "--config",
            str(ROOT / "configs" / f"demo-{task}" / "distill.yaml"),
            "--config",
            csv_only(tmp),
            "--model.init_args.teacher",
            str(moved),
            "--data.init_args.max_train_samples",
            "64",
            "--data.init_args.max_eval_samples",
            "32",
            "--data.init_args.cache_dir",
            str(tmp / "cache"),
            "--model.init_args.cache_dir",
            str(tmp / "cache"),
            "--out_dir",
            str(tmp / "distill"),
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
        cli.main(["fit", *distill])
        card = (tmp / "distill" / "model" / "README.md").read_text()
        assert "DistillationModule" in card and "FineTuneModule" in card  # lineage teacher -> student
        # PTQ of the distilled student, evaluated with the QAT config (as the demo does)
        ptq = tmp / "distill" / "ptq.int8.ckpt"
        student = tmp / "distill" / "checkpoints" / "last.ckpt"
        result = run_script(
            "export.py",
            "ptq",
            "--model",
            str(student),
            "--out",
            str(ptq),
            "--overwrite",
            "--data",
            config,
            "--set",
            f"cache_dir={tmp / 'cache'}",
            "--set",
            "max_train_samples=64",
            cwd=tmp,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        result = run_cli(
            "test",
            "--config",
            config,
            "--config",
            csv_only(tmp),
            "--ckpt_path",
            str(ptq),
            "--model.init_args.teacher",
            "null",
            "--data.init_args.max_eval_samples",
            "32",
            "--data.init_args.cache_dir",
            str(tmp / "cache"),
            "--out_dir",
            str(tmp / "ptq_test"),
            cwd=tmp,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert (tmp / "ptq_test" / "test_metrics.json").is_file()
    finally:
        shutil.move(tmp / "tokenizer.gone", tmp / "tokenizer")


def test_onnx_folder_and_shrink_classify_on_raw_text(fitted, tmp_path, capsys):
    task, tmp, _ = fitted
    config = str(ROOT / "configs" / f"demo-{task}" / "qat.yaml")
    out = tmp_path / "onnx-int8"
    export.main(
        [
            "onnx",
            "--model",
            str(tmp / "run" / "model"),
            "--out",
            str(out),
            "--data",
            config,
            "--int8",
            "--set",
            f"cache_dir={tmp / 'cache'}",
            "--set",
            "max_eval_samples=64",
        ]
    )
    parity = json.loads((out / "parity.json").read_text())
    assert parity["int8"] and parity["agreement"] >= 0.995 and parity["int8_kernel"] == "u8s8"
    assert parity["scheme"] == "static"
    if has_int8_dot():  # the file as exported is what shrink runs here
        assert "as_run_here" not in parity
    else:  # shrink runs it as u8u8 here: the same integer sums, so the same agreement
        assert parity["as_run_here"]["agreement"] == parity["agreement"]
    card = (out / "README.md").read_text()
    assert "agreement with PyTorch" in card and "ORTModelFor" in card
    capsys.readouterr()
    text = "Anna Schmidt flew to Berlin" if task == "token" else "a wonderful film"
    outputs = {}
    for source in (tmp / "run" / "model", out, tmp / "run" / "checkpoints" / "last.ckpt"):
        classify_main([str(source), text, "the second text"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2
        outputs[source.name] = [json.loads(line) for line in lines]
    row = outputs["model"][0]
    if task == "sequence":
        assert row["label"] in ("negative", "positive") and 0.5 <= row["score"] <= 1
        assert outputs["last.ckpt"][0]["label"] == outputs["model"][0]["label"]  # best == last here
    else:
        assert all(text[e["start"] : e["end"]] == e["word"] for e in row["entities"])
    # many texts: batches run longest first within a window, the lines come in the input's order,
    # each as the text classified alone
    texts = ["fine", text, "the second text", f"{text} and {text} again", "x y", text.upper()] * 3
    many = tmp_path / "many.txt"
    many.write_text("\n".join(texts) + "\n")
    classify_main([str(tmp / "run" / "model"), "--file", str(many), "--batch-size", "2"])
    batched = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in batched] == texts
    classify_main([str(tmp / "run" / "model"), "--file", str(many), "--batch-size", "1"])
    for together, alone in zip(
        batched, (json.loads(line) for line in capsys.readouterr().out.splitlines()), strict=True
    ):
        if task == "sequence":
            assert together["label"] == alone["label"] and together["score"] == pytest.approx(
                alone["score"], abs=1e-5
            )
        else:
            assert [(e["type"], e["start"], e["end"]) for e in together["entities"]] == [
                (e["type"], e["start"], e["end"]) for e in alone["entities"]
            ]
    # an ONNX folder runs without torch (a clean process), with the same lines as in-process
    clean = (
        "import sys; from lightning_modules.commands.classify import main; main(sys.argv[1:]); "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchao', 'transformers')]"
    )
    result = subprocess.run(
        [sys.executable, "-c", clean, str(out), text, "the second text"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line) for line in result.stdout.splitlines()] == outputs[out.name]
    # its tokenizer encodes as transformers' does: special tokens, pairs, truncation, padding, offsets
    reference, mine = AutoTokenizer.from_pretrained(out), FolderTokenizer(out)
    samples = [*texts, " ".join([text] * 200)]
    batch, word_ids, offsets = mine(samples, None, 512, True)
    want = reference(samples, padding=True, truncation=True, max_length=512, return_offsets_mapping=True)
    assert {k: v.tolist() for k, v in batch.items() if k in want} == {
        k: v for k, v in want.items() if k != "offset_mapping"
    }
    assert word_ids == [want.word_ids(r) for r in range(len(samples))]
    assert offsets == [[list(o) for o in row] for row in want["offset_mapping"]]
    batch, _, _ = mine(samples, samples[::-1], 24, False)
    want = reference(samples, samples[::-1], padding=True, truncation=True, max_length=24)
    assert {k: v.tolist() for k, v in batch.items() if k in want} == dict(want)
    for bad, message in ((["x", ""], "input 2 is empty"), ([], "no input")):
        with pytest.raises(SystemExit) as exit_info:
            classify_main([str(out), *bad]) if bad else classify_main([str(out), "--file", "/dev/null"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")
    with pytest.raises(SystemExit):
        classify_main([str(tmp), "text"])  # a folder that is not a model
    assert capsys.readouterr().err.startswith("error: model")


def test_entities_from_word_tags_by_hand():
    text = "Anna Schmidt flew to New York"
    #            0123456789012345678901234567
    words = [(1, 0, 4), (2, 5, 12), (3, 13, 17), (4, 18, 20), (5, 21, 24), (7, 25, 29)]
    tags = [("B-PER", 0.9), ("I-PER", 0.7), ("O", 1.0), ("O", 1.0), ("I-LOC", 0.6), ("I-LOC", 0.8)]
    assert entities(text, words, tags) == [
        {"type": "PER", "word": "Anna Schmidt", "start": 0, "end": 12, "score": 0.8},
        {"type": "LOC", "word": "New York", "start": 21, "end": 29, "score": 0.7},
    ]
    # sub-tokens of one word: the first gives the index, the last the end offset
    assert word_spans([None, 0, 0, 1, None], [[0, 0], [0, 2], [2, 4], [5, 7], [0, 0]]) == [
        (1, 0, 4),
        (3, 5, 7),
    ]


def test_int8_folder_reloads_as_the_identical_int8_model(tmp_path):
    """QAT / PTQ folders hold the int8 weights dequantized: re-quantizing them gives the same int8
    tensors and the same logits."""
    from lightning_modules.artifacts.classifiers import load_trained
    from lightning_modules.artifacts.model_folder import write_model_folder
    from lightning_modules.methods.quantize import convert_to_int8, prepare_qat
    from tests.int8_models import inputs, tiny_classifier

    int8 = convert_to_int8(prepare_qat(tiny_classifier("sequence")))
    quantization = {"scheme": "int8", "embeddings": True, "head": False}
    write_model_folder(int8, demo_tokenizer(tmp_path / "cache"), tmp_path / "model", "card", quantization)
    again = load_trained(str(tmp_path / "model")).model
    batch = inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, int8(**batch).logits, atol=1e-5, rtol=0)
    weight = "bert.encoder.layer.0.attention.self.query.weight"
    a, b = int8.state_dict()[weight], again.state_dict()[weight]
    assert torch.equal(a.qdata, b.qdata) and torch.equal(a.scale, b.scale)


def test_push_to_hub_offline_is_one_line_and_keeps_the_folder(fitted, capsys, monkeypatch):
    _, tmp, _ = fitted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = sorted(p.name for p in (tmp / "run" / "model").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        export.main(["push", "--folder", str(tmp / "run" / "model"), "--repo_id", "someone/shrink-test"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: push to the Hub (someone/shrink-test) failed")
    assert sorted(p.name for p in (tmp / "run" / "model").iterdir()) == before


def test_scripts_read_a_data_section_as_shrink_does(tmp_path):
    """A short class_path (which `shrink` accepts) and one-line errors for a bad key or a non-YAML file."""
    import yaml

    from datamodules import InputError, datamodule_from_config

    values = yaml.safe_load((ROOT / "configs" / "demo-token" / "qat.yaml").read_text())
    values["data"] = yaml.safe_load((ROOT / "configs" / "demo-token" / values["data"]).read_text())  # inline
    values["data"]["class_path"] = "TokenClassificationDataModule"
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(values))
    data = datamodule_from_config(path, {"max_eval_samples": 7})
    assert type(data).__name__ == "TokenClassificationDataModule" and data.max_eval_samples == 7
    with pytest.raises(InputError, match="'bogus' is not accepted"):
        datamodule_from_config(path, {"bogus": 1})
    (tmp_path / "bad.yaml").write_bytes(b"data: [\xff")
    with pytest.raises(InputError, match="not a readable YAML file"):
        datamodule_from_config(tmp_path / "bad.yaml")
