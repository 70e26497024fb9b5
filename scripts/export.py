"""Export for deployment, and the post-training quantization (PTQ) baseline.

    # ONNX (fp32, or int8 when the checkpoint is int8 or --int8 is given), checked on the validation set
    python scripts/export.py onnx --model outputs/sst2/qat/int8.ckpt --out outputs/sst2/qat/model.int8.onnx \\
        --data configs/sst2/qat.yaml
    # PTQ: int8 dynamic quantization of an fp32 checkpoint, no training (same scheme as QAT)
    python scripts/export.py ptq --model outputs/sst2/distill/checkpoints/last.ckpt --out outputs/sst2/ptq.int8.ckpt

The parity check runs the PyTorch model and the ONNX Runtime model over the validation split
and fails (exit 1, no file written) below ``--min-agreement`` label agreement.
GPU deployment: the fp32 ONNX runs on ONNX Runtime's CUDA / TensorRT providers (TensorRT builds
its own int8 or fp16 engine); in PyTorch, the torchao int8 checkpoint runs on GPU under torch.compile.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from datamodules import InputError, datamodule_from_config, parse_overrides  # noqa: E402
from lightning_modules.base import load_classifier, read_checkpoint  # noqa: E402
from lightning_modules.export import OnnxClassifier, export_onnx, input_names, parity, pytorch_logits  # noqa: E402
from lightning_modules.qat import QATModule  # noqa: E402
from lightning_modules.quantize import SCHEME, convert_to_int8, save_int8_checkpoint  # noqa: E402


def onnx_command(args: argparse.Namespace) -> None:
    checkpoint = read_checkpoint(args.model)
    task = checkpoint["hyper_parameters"]["task"]
    quantization = checkpoint.get("quantization")
    int8 = args.int8 or quantization is not None
    model = load_classifier(args.model, task, int8_ok=True)
    if int8 and quantization is None:  # PTQ first: the parity check then compares int8 with int8
        convert_to_int8(model)
    tokenizer = checkpoint["hf_config"].get("shrink_tokenizer")
    data = datamodule_from_config(
        args.data, {**({"tokenizer": tokenizer} if tokenizer else {}), **parse_overrides(args.set)}
    )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists: pass --overwrite or another --out")
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        candidate = Path(tmp) / out.name
        export_onnx(model, candidate)
        data.setup("validate")
        report = parity(
            pytorch_logits(model.eval(), input_names(model)),
            OnnxClassifier(candidate, args.threads),
            data.val_dataloader(),
            task,
        )
        report.update(model=args.model, onnx=str(out), int8=int8, task=task)
        print(json.dumps(report, indent=1))
        if report["agreement"] < args.min_agreement:
            raise InputError(
                f"parity check failed: ONNX Runtime agrees with PyTorch on {report['agreement']:.2%} of "
                f"{report['compared']} predictions (< {args.min_agreement:.2%}); {out} not written"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(candidate, out)
    Path(f"{out}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


def ptq_command(args: argparse.Namespace) -> None:
    checkpoint = read_checkpoint(args.model)
    if "quantization" in checkpoint:
        raise InputError(f"--model {args.model} is already int8-quantized: PTQ needs an fp32 checkpoint")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists: pass --overwrite or another --out")
    source = checkpoint["hyper_parameters"]
    model = load_classifier(args.model, source["task"]).eval()
    convert_to_int8(model, embeddings=not args.fp32_embeddings, head=args.quantize_head)
    quantization = {
        "scheme": SCHEME,
        "embeddings": not args.fp32_embeddings,
        "head": args.quantize_head,
        "method": "ptq",
    }
    # `shrink validate/test/predict --ckpt_path` rebuild the model class from these hyper-parameters
    accepted = inspect.signature(QATModule.__init__).parameters
    hparams = {k: v for k, v in source.items() if k in accepted and k != "teacher"}
    hparams.update(_class_path="lightning_modules.QATModule", model_name_or_path=args.model)
    save_int8_checkpoint(model, out, hparams, quantization, dict(checkpoint["hf_config"]))
    print(f"wrote {out} ({SCHEME}, post-training)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    onnx = commands.add_parser("onnx", help="export to ONNX and check parity on the validation split")
    onnx.add_argument("--model", required=True, help="a .ckpt of this project (fp32 or int8)")
    onnx.add_argument("--out", required=True, help="the .onnx file to write")
    onnx.add_argument(
        "--data", required=True, help="run config whose data: section gives the validation split"
    )
    onnx.add_argument("--set", action="append", default=[], help="data init arg override KEY=VALUE")
    onnx.add_argument(
        "--int8",
        action="store_true",
        help="int8 ONNX from an fp32 checkpoint (PTQ, the scheme of the ptq command)",
    )
    onnx.add_argument("--min-agreement", type=float, default=0.995, help="fail below this label agreement")
    onnx.add_argument("--threads", type=int, default=1)
    onnx.add_argument("--overwrite", action="store_true")
    ptq = commands.add_parser("ptq", help="int8 dynamic quantization of an fp32 checkpoint (no training)")
    ptq.add_argument("--model", required=True, help="an fp32 .ckpt of this project")
    ptq.add_argument("--out", required=True, help="the int8 .ckpt to write")
    ptq.add_argument("--fp32-embeddings", action="store_true", help="keep word embeddings in fp32")
    ptq.add_argument("--quantize-head", action="store_true", help="also int8 the classifier head")
    ptq.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        (onnx_command if args.command == "onnx" else ptq_command)(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1 if str(e).startswith("parity") else 2)


if __name__ == "__main__":
    main()
