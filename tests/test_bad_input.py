"""Every bad input gets one ``error:`` line naming the problem and the fix, exit status 2, and
nothing written or overwritten (file hashes before and after). The commands run in-process."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import onnxruntime
import pytest
import torch

from lightning_modules.commands import benchmark, export
from lightning_modules.commands.classify import main as classify_main
from lightning_modules.train import cli
from tests.conftest import ROOT
from tests.test_deliverables import csv_only


def demo(task: str, stage: str, tmp: Path, *extra: str, overwrite: bool = True) -> list[str]:
    """A short demo fit; ``overwrite``: into a folder that may hold an earlier run (each case's own error first)."""
    return [
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / f"{stage}.yaml"),
        "--config",
        csv_only(tmp),
        *(["--overwrite", "true"] if overwrite else []),
        "--data.init_args.max_train_samples",
        "64",
        "--data.init_args.max_eval_samples",
        "32",
        "--data.init_args.cache_dir",
        str(tmp / "cache"),
        "--out_dir",
        str(tmp / f"{task}_{stage}"),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *(["--model.init_args.cache_dir", str(tmp / "cache")] if stage != "finetune" else []),
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A one-epoch fine-tune of each task (teachers and checkpoints for the cases), and bad files."""
    tmp = tmp_path_factory.mktemp("bad")
    for task in ("sequence", "token"):
        cli.main(["fit", *demo(task, "finetune", tmp)])
    (tmp / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9 au lait\t1\n".encode("latin-1"))
    (tmp / "empty.tsv").write_text("sentence\tlabel\na fine film\t1\n \t0\n")
    (tmp / "floats.tsv").write_text("sentence\tlabel\na fine film\t0.75\nawful\t0.1\n")
    rows = [{"tokens": ["Anna", "flew", "home"], "tags": ["B-PER", "O"]}]
    (tmp / "mismatch.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp / "not_a_dir").write_text("a file")
    (tmp / "not_yaml.yaml").write_text("trainer: [unclosed\n  max_epochs: : 3\n")
    from datamodules.demo import demo_tokenizer
    from lightning_modules.artifacts.classifiers import load_trained
    from lightning_modules.artifacts.model_folder import write_model_folder
    from lightning_modules.methods.quantize import convert_to_int8

    int8 = convert_to_int8(load_trained(str(tmp / "sequence_finetune" / "model")).model)
    quantization = {"scheme": "per-token", "embeddings": True, "head": False}
    write_model_folder(int8, demo_tokenizer(tmp / "cache"), tmp / "int8_model", "card", quantization)
    pickled = torch.load(tmp / "sequence_finetune" / "checkpoints" / "last.ckpt", weights_only=False)
    pickled["hyper_parameters"]["evil"] = Path("/etc")  # an arbitrary Python object
    torch.save(pickled, tmp / "pickled.ckpt")
    return tmp


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "cache" not in p.parts and "csv" not in p.parts
    }


def cases(tmp: Path) -> dict[str, tuple]:
    seq, tok = "sequence", "token"
    teacher = str(tmp / "sequence_finetune" / "checkpoints" / "last.ckpt")
    token_ckpt = str(tmp / "token_finetune" / "checkpoints" / "last.ckpt")
    files = lambda train: ["--data.init_args.data_files", f"{{train: {train}, validation: {train}}}"]  # noqa: E731
    distill = lambda *extra: ("fit", demo(seq, "distill", tmp, "--model.init_args.teacher", teacher, *extra))  # noqa: E731
    return {
        # the ten
        # a hub dataset that cannot be reached (offline here): one line naming data.data_files
        "could not be loaded from the Hugging Face hub": (
            "fit",
            demo(
                seq,
                "finetune",
                tmp,
                "--data.init_args.dataset",
                "no-such-user/no-such-dataset",
                "--data.init_args.data_files",
                "null",
            ),
        ),
        # nothing lost: a fresh fit into a finished run's folder, labels twice, inputs past the positions
        "holds an earlier run": ("fit", demo(seq, "finetune", tmp, overwrite=False)),
        "data.label_names names ['positive'] more than once": (
            "fit",
            demo(seq, "finetune", tmp, "--data.init_args.label_names", "[negative, positive, positive]"),
        ),
        "data.max_length 512 is longer than the model's 128 positions": (
            "fit",
            demo(seq, "finetune", tmp, "--data.init_args.max_length", "512"),
        ),
        "model.learning_rate is -1": (
            "fit",
            demo(seq, "finetune", tmp, "--model.init_args.learning_rate", "-1"),
        ),
        "data.batch_size is 0": ("fit", demo(seq, "finetune", tmp, "--data.init_args.batch_size", "0")),
        "is not UTF-8": ("fit", demo(seq, "finetune", tmp, *files(tmp / "latin1.tsv"))),
        "has 3 'tokens' but 2 'tags'": ("fit", demo(tok, "finetune", tmp, *files(tmp / "mismatch.jsonl"))),
        "is a file: give a folder": ("fit", demo(seq, "finetune", tmp, "--out_dir", str(tmp / "not_a_dir"))),
        "--threads is 0": (
            "benchmark",
            [
                "--data",
                str(ROOT / "configs/demo-sequence/qat.yaml"),
                "--out",
                str(tmp / "bench"),
                "--threads",
                "0",
                "--model",
                f"t={teacher}",
            ],
        ),
        "pickled Python objects": distill()[:1]
        + (demo(seq, "distill", tmp, "--model.init_args.teacher", str(tmp / "pickled.ckpt")),),
        "data.max_length is 0": ("fit", demo(seq, "finetune", tmp, "--data.init_args.max_length", "0")),
        "row 2 has an empty 'sentence'": (
            "fit",
            demo(seq, "finetune", tmp, *files(tmp / "empty.tsv"), "--data.init_args.text_column", "sentence"),
        ),
        "is a folder: give a .ckpt file": ("fit", demo(seq, "finetune", tmp, "--ckpt_path", str(tmp))),
        # ten more
        "names a layer that does not exist": distill(
            "--model.init_args.hidden_weight", "1", "--model.init_args.layer_map", "{1: 9}"
        ),
        "names layers outside": distill(
            "--model.init_args.student_config", "null", "--model.init_args.student_layers", "[0, 5]"
        ),
        "teacher labels ['negative', 'positive'] differ": distill(
            "--data.init_args.label_names", "[positive, negative]"
        ),
        "is a token-classification model but the data is sequence": (
            "fit",
            demo(seq, "distill", tmp, "--model.init_args.teacher", token_ckpt),
        ),
        "not_yaml.yaml": ("fit", ["--config", str(tmp / "not_yaml.yaml")]),
        "a fraction": (
            "fit",
            demo(
                seq, "finetune", tmp, *files(tmp / "floats.tsv"), "--data.init_args.text_column", "sentence"
            ),
        ),
        "the temperature must be above 0": distill("--model.init_args.temperature", "0"),
        "model.warmup_ratio is 1.5": (
            "fit",
            demo(seq, "finetune", tmp, "--model.init_args.warmup_ratio", "1.5"),
        ),
        "data.num_workers is -1": ("fit", demo(seq, "finetune", tmp, "--data.init_args.num_workers", "-1")),
        "is an int8 model folder": (
            "fit",
            demo(
                seq,
                "qat",
                tmp,
                "--model.init_args.model_name_or_path",
                str(tmp / "int8_model"),
                "--model.init_args.teacher",
                "null",
            ),
        ),
        "input 2 is empty": ("classify", [str(tmp / "sequence_finetune" / "model"), "fine", " "]),
        "fp16 export is for fp32 models": (
            "export",
            [
                "onnx",
                "--model",
                str(tmp / "int8_model"),
                "--out",
                str(tmp / "fp16"),
                "--data",
                str(ROOT / "configs/demo-sequence/qat.yaml"),
                "--fp16",
            ],
        ),
        "prune the vocabulary of its fp32 model": (
            "export",
            [
                "prune-vocab",
                "--model",
                str(tmp / "int8_model"),
                "--out",
                str(tmp / "vocab"),
                "--data",
                str(ROOT / "configs/demo-sequence/qat.yaml"),
            ],
        ),
        "is not N or increasing N1,N2,...": (
            "export",
            [
                "prune-vocab",
                "--model",
                str(tmp / "sequence_finetune" / "model"),
                "--out",
                str(tmp / "vocab"),
                "--data",
                str(ROOT / "configs/demo-sequence/qat.yaml"),
                "--keep-first",
                "20000,0",
            ],
        ),
        # GPU paths asked for on a machine without them (where they exist, these are not errors)
        **(
            {
                "has no CUDAExecutionProvider": (
                    "benchmark",
                    [
                        "--data",
                        str(ROOT / "configs/demo-sequence/qat.yaml"),
                        "--out",
                        str(tmp / "bench"),
                        "--provider",
                        "cuda",
                        "--model",
                        f"t={teacher}",
                    ],
                )
            }
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
            else {}
        ),
        **(
            {
                "torch sees no CUDA device": (
                    "benchmark",
                    [
                        "--data",
                        str(ROOT / "configs/demo-sequence/qat.yaml"),
                        "--out",
                        str(tmp / "bench"),
                        "--device",
                        "cuda",
                        "--model",
                        f"t={teacher}",
                    ],
                )
            }
            if not torch.cuda.is_available()
            else {}
        ),
    }


def run(kind: str, args: list[str]) -> int:
    main = {"benchmark": benchmark.main, "classify": classify_main, "export": export.main}.get(kind)
    try:
        main(args) if main else cli.main([kind, *args])
    except SystemExit as e:
        return e.code
    return 0


def test_every_bad_input_is_one_line_exit_2_and_nothing_written(runs, capsys):
    table = []
    for expected, (kind, args) in cases(runs).items():
        before = hashes(runs)
        code = run(kind, args)
        err = capsys.readouterr().err.strip().splitlines()
        last = err[-1] if err else ""
        table.append((expected, code, last))
        assert code == 2 and last.startswith("error:") and expected in last, (expected, code, err[-5:])
        assert "Traceback" not in "\n".join(err), expected
        assert hashes(runs) == before, f"{expected}: files changed"
    print("\n".join(f"| {e} | {c} | {line} |" for e, c, line in table), file=sys.__stdout__)


def test_a_standard_lightning_callback_from_the_command_line(runs):
    """Timer's enum default (interval=Interval.step) once broke the saved config with a traceback, and
    a callback without arguments (no init_args in its config) once broke the output paths."""
    args = demo("sequence", "finetune", runs, "--out_dir", str(runs / "timer"))
    cli.main(
        [
            "fit",
            *args,
            "--trainer.callbacks+=lightning.pytorch.callbacks.Timer",
            "--trainer.callbacks+=lightning.pytorch.callbacks.Callback",
        ]
    )
    saved = [p.read_text() for p in (runs / "csv").rglob("config.yaml")]  # beside the CSV logs
    assert any("lightning.pytorch.callbacks.Timer" in c and "interval: step" in c for c in saved)
    assert (runs / "timer" / "model" / "model.safetensors").is_file()


def test_bf16_on_a_cpu_without_bf16_trains_in_fp32_and_says_so(runs, capsys, monkeypatch):
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: False)
    args = demo(
        "sequence", "finetune", runs, "--out_dir", str(runs / "fallback"), "--trainer.precision", "bf16-mixed"
    )
    cli.main(["fit", *args])
    err = capsys.readouterr().err
    assert "trainer.precision bf16-mixed -> 32: this CPU has no bf16 instructions" in err
    saved = max((runs / "csv").rglob("config.yaml"), key=lambda p: p.stat().st_mtime).read_text()
    assert "precision: 32-true" in saved and "bf16-mixed" not in saved  # what the trainer ran with


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_last_one(runs, capsys, monkeypatch):
    """The disk fills up on the second checkpoint write (as on a 12 MB tmpfs: torch's zip writer fails
    with ``unexpected pos`` over ENOSPC): one line naming the folder, the size and --ckpt_path last;
    the first last.ckpt stays intact and loadable."""
    import errno

    from lightning_modules.artifacts import checkpoints

    writes = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        writes.append(f)
        if len(writes) == 2:
            f.write(b"PK" + b"\0" * 1000)  # a torn start, as a filling disk leaves it
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64") from OSError(
                errno.ENOSPC, "No space left on device"
            )
        return real_save(obj, f, *args, **kwargs)

    out = runs / "full_disk"
    args = demo("sequence", "finetune", runs, "--out_dir", str(out), "--trainer.max_epochs", "2")
    monkeypatch.setattr(checkpoints.torch, "save", save)
    assert run("fit", args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the disk of " + str(out / "checkpoints")), last
    assert "MB needed" in last and "--ckpt_path last" in last
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    saved = list((out / "checkpoints").glob("*.ckpt"))
    assert saved and not list((out / "checkpoints").glob(".*tmp*"))  # no torn temporary file left
    for path in saved:
        assert "state_dict" in checkpoints.check_checkpoint(str(path))  # intact: they load
