"""ONNX folders in the ecosystem: optimum's ``ORTModelFor{Sequence,Token}Classification`` loads the
fp32 and int8 folders of ``shrink export onnx`` and runs them inside ``transformers.pipeline``,
with the same predictions as ``shrink-classify``. optimum-onnx 0.1.0 needs transformers < 4.58, so
it runs in a virtual environment of its own (this project's packages, with transformers 4.57 and
optimum installed over them), in a subprocess that never imports shrink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_modules.commands.classify import Classifier
from lightning_modules.train import cli
from tests.conftest import ENV, ROOT, run_script
from tests.test_deliverables import csv_only

OPTIMUM = ["optimum-onnx==0.1.0", "transformers>=4.56,<4.58"]
CHECK = """
import json, sys
from optimum.onnxruntime import ORTModelForSequenceClassification, ORTModelForTokenClassification
from transformers import AutoTokenizer, pipeline
folder, task, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
auto = ORTModelForSequenceClassification if task == "sequence" else ORTModelForTokenClassification
kind = "text-classification" if task == "sequence" else "token-classification"
classify = pipeline(kind, model=auto.from_pretrained(folder), tokenizer=AutoTokenizer.from_pretrained(folder))
assert not [m for m in sys.modules if m.split(".")[0] in ("lightning_modules", "datamodules", "lightning")]
print(json.dumps(classify(texts), default=float))
"""


@pytest.fixture(scope="session")
def optimum_python() -> str:
    venv = Path("~/.cache/shrink/optimum-venv").expanduser()
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), *OPTIMUM],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if install.returncode != 0:
            import shutil

            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(
                f"optimum-onnx could not be installed (no package registry?): {install.stderr[-300:]}"
            )
    return str(python)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_optimum_runs_the_fp32_and_int8_onnx_folders_in_a_pipeline(task, optimum_python, tmp_path):
    args = [
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / "finetune.yaml"),
        "--config",
        csv_only(tmp_path),
        "--data.init_args.max_train_samples",
        "640",
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--out_dir",
        str(tmp_path / "run"),
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
    ]
    cli.main(["fit", *args])
    texts = (
        ["a wonderful film", "not good at all", "dull , but the ending is great"]
        if task == "sequence"
        else ["Anna Schmidt flew to Berlin", "The ministry in Paris said Jordan won"]
    )
    for name, extra in (("fp32", []), ("int8", ["--int8"])):
        folder = tmp_path / f"onnx-{name}"
        result = run_script(
            "export.py",
            "onnx",
            "--model",
            str(tmp_path / "run" / "model"),
            "--out",
            str(folder),
            "--data",
            str(ROOT / "configs" / f"demo-{task}" / "qat.yaml"),
            "--set",
            f"cache_dir={tmp_path / 'cache'}",
            "--set",
            "max_eval_samples=64",
            *extra,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        check = subprocess.run(
            [optimum_python, "-c", CHECK, str(folder), task, json.dumps(texts)],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=tmp_path,
            timeout=300,
        )
        assert check.returncode == 0, check.stderr[-3000:]
        from_optimum = json.loads(check.stdout.strip().splitlines()[-1])
        ours = Classifier(str(folder))(texts)
        if task == "sequence":
            assert [r["label"] for r in from_optimum] == [r["label"] for r in ours], name
            for a, b in zip(from_optimum, ours, strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        else:  # the first sub-token of each entity word carries its B-/I- tag in both
            for pipe, row in zip(from_optimum, ours, strict=True):
                starts = {e["start"]: e["entity"] for e in pipe}
                for entity in row["entities"]:
                    assert starts.get(entity["start"], "O").endswith(entity["type"]), (name, pipe, row)
