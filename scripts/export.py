"""Export for deployment, and the post-training quantization (PTQ) baseline.

    # an ONNX folder (fp32, or int8 when the model is int8 or --int8 is given), checked on the validation set
    python scripts/export.py onnx --model outputs/sst2/qat/int8.ckpt --out outputs/sst2/qat/onnx-int8 \\
        --data configs/sst2/qat.yaml [--push_to_hub user/sst2-int8]
    # upload a stage's model folder (or an ONNX folder) to the Hugging Face Hub
    python scripts/export.py push --folder outputs/sst2/distill/model --repo_id user/sst2-student
    # PTQ: int8 dynamic quantization of an fp32 checkpoint, no training (same scheme as QAT)
    python scripts/export.py ptq --model outputs/sst2/distill/checkpoints/last.ckpt --out outputs/sst2/ptq.int8.ckpt

The parity check runs the PyTorch model and the ONNX Runtime model over the validation split
and fails (exit 1, no folder written or replaced) below ``--min-agreement`` label agreement. The
folder loads in optimum's ``ORTModelFor{Sequence,Token}Classification`` and in ``shrink-classify``.
GPU deployment: ``--fp16`` writes a float16 graph (fp32 models) and ``--provider cuda`` or
``tensorrt`` runs the parity check on ONNX Runtime's GPU providers (onnxruntime-gpu in place of
onnxruntime; TensorRT builds its own fp16 engine); ``scripts/benchmark.py --provider`` times them there.
The int8 graphs are CPU graphs: MatMulInteger has no fast CUDA kernel.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from datamodules import InputError, datamodule_from_config, parse_overrides  # noqa: E402
from lightning_modules.base import load_classifier, read_checkpoint  # noqa: E402
from lightning_modules.export import (  # noqa: E402
    INT8_KERNELS,
    ONNX_FILE,
    OPSET,
    PROVIDERS,
    OnnxClassifier,
    cpu_name,
    export_onnx,
    fused_ops,
    input_names,
    parity,
    provider_name,
    pytorch_logits,
    session_providers,
)
from lightning_modules.model_folder import (  # noqa: E402
    CARD_NAME,
    load_trained,
    model_card,
    replace_folder,
    save_tokenizer,
)
from lightning_modules.qat import QATModule  # noqa: E402
from lightning_modules.quantize import SCHEME, convert_to_int8, save_int8_checkpoint  # noqa: E402


def onnx_command(args: argparse.Namespace) -> None:
    session_providers(args.provider)  # before any work: a missing GPU provider is one line
    trained = load_trained(args.model)
    model, task = trained.model, trained.task
    int8 = args.int8 or trained.quantization is not None
    if int8 and trained.quantization is None:  # PTQ first: the parity check then compares int8 with int8
        convert_to_int8(model)
    tokenizer = trained.tokenizer
    data = datamodule_from_config(
        args.data, {**({"tokenizer": tokenizer} if tokenizer else {}), **parse_overrides(args.set)}
    )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists: pass --overwrite or another --out")
    data.setup("validate")
    report: dict = {}

    def build(tmp: Path) -> None:
        export_onnx(model, tmp / ONNX_FILE, int8_kernel=args.int8_kernel, fuse=args.fuse, fp16=args.fp16)
        report["fused_ops"] = fused_ops(tmp / ONNX_FILE) if args.fuse else {}
        reference = pytorch_logits(model.eval(), input_names(model))
        exported = OnnxClassifier(tmp, args.threads, "as-exported", args.provider)
        report.update(parity(reference, exported, data.loader("validate"), task))
        report.update(model=args.model, onnx=str(out), int8=int8, int8_kernel=args.int8_kernel if int8 else None,
                      fp16=args.fp16, provider=args.provider, task=task, cpu=cpu_name(),
                      parameters=sum(p.numel() for p in model.parameters()))  # fmt: skip
        checks = [report]
        here = OnnxClassifier(tmp, args.threads, provider=args.provider)  # VNNI / AMX CPUs: a u8u8 file runs as u8s8
        if here.kernel != report["int8_kernel"]:
            report["as_run_here"] = {"int8_kernel": here.kernel, **parity(reference, here, data.loader("validate"), task)}
            checks.append(report["as_run_here"])
        print(json.dumps(report, indent=1))
        for check in checks:
            if check["agreement"] < args.min_agreement:
                raise InputError(
                    f"parity check failed: ONNX Runtime agrees with PyTorch on {check['agreement']:.2%} of "
                    f"{check['compared']} predictions (< {args.min_agreement:.2%}); {out} not written"
                )
        model.config.architectures = [type(model).__name__]
        if hasattr(model.config, "auto_map"):  # a pruned model's code: the ONNX graph has its shapes
            del model.config.auto_map
        model.config.save_pretrained(tmp)  # labels and architecture: what optimum's ORTModel reads
        save_tokenizer(data.tokenizer, tmp)
        (tmp / "parity.json").write_text(json.dumps(report, indent=1))
        card = onnx_card(model, task, report, trained.quantization, out.name, tmp / ONNX_FILE)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")

    replace_folder(build, out)
    print(f"wrote {out}")
    if args.push_to_hub:
        push_folder(out, args.push_to_hub)


def onnx_card(model, task: str, report: dict, quantization: dict | None, name: str, onnx_path: Path) -> str:
    """The ONNX folder's model card: what it computes and how closely it matches PyTorch."""
    size = onnx_path.stat().st_size
    scheme = (quantization or {}).get("scheme", SCHEME) if report["int8"] else "fp16" if report.get("fp16") else "fp32"
    facts = {
        "runtime": f"ONNX Runtime ({provider_name(report.get('provider', 'cpu'))}), opset {OPSET}",
        "numerics": scheme,
        "int8 MatMulInteger": {
            "u8u8": "uint8 x uint8 (exact on every CPU)",
            "u8s8": "uint8 x int8 (VNNI/AMX CPUs only)",
        }.get(report.get("int8_kernel"), "none"),
        "file size": f"{size / 1e6:.2f} MB",
        "fused ops (onnxruntime.transformers)": report.get("fused_ops") or "none",
        "exported from": report["model"],
    }
    parity_figures = {
        "agreement with PyTorch": report["agreement"],
        "max |logit difference|": report["max_logit_diff"],
        "compared predictions": report["compared"],
        "checked on": report["cpu"] + ("" if report.get("provider", "cpu") == "cpu" else f" + {report['provider']} GPU"),
    }
    if "as_run_here" in report:  # shrink runs the u8u8 file as u8s8 on VNNI / AMX CPUs: checked too
        parity_figures["agreement run as u8s8 (shrink, VNNI/AMX)"] = report["as_run_here"]["agreement"]
    lineage = list(getattr(model.config, "shrink_lineage", None) or [])
    lineage.append({"stage": "ONNX export", "model": report["model"], "int8": report["int8"]})
    auto = "ORTModelForSequenceClassification" if task == "sequence" else "ORTModelForTokenClassification"
    pipeline_tag = "text-classification" if task == "sequence" else "token-classification"
    usage = (
        f"from optimum.onnxruntime import {auto}\n"
        "from transformers import AutoTokenizer, pipeline\n"
        f'model = {auto}.from_pretrained("PATH/TO/THIS/FOLDER")\n'
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")\n'
        f'classifier = pipeline("{pipeline_tag}", model=model, tokenizer=tokenizer)\n'
        '# or, with no optimum: shrink-classify PATH/TO/THIS/FOLDER "a text"'
    )
    return model_card(
        title=f"{name} (ONNX{' int8' if report['int8'] else ''})",
        task=task,
        labels=[model.config.id2label[i] for i in range(model.config.num_labels)],
        facts=facts,
        metrics=parity_figures,
        lineage=lineage,
        command="python scripts/export.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        usage=usage,
    )


def push_folder(folder: Path, repo_id: str) -> None:
    """Upload a model folder (weights or ONNX, tokenizer, card) to the Hugging Face Hub."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        url = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, commit_message="shrink: upload model"
        )
    except Exception as e:  # noqa: BLE001 - offline, no token, no rights: one line, nothing else written
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(
            f"push to the Hub ({repo_id}) failed: {reason}; the folder {folder} is intact: "
            "check the network and `huggingface-cli login`, then rerun with --push_to_hub or use push"
        ) from None
    print(f"pushed {folder} to {url}")


def push_command(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        raise InputError(
            f"{folder} is not a model folder (no config.json): give OUT_DIR/model or an ONNX folder"
        )
    push_folder(folder, args.repo_id)


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
    accepted = {name for cls in QATModule.__mro__ if "__init__" in vars(cls)  # with the **kwargs it passes on
                for name in inspect.signature(cls.__init__).parameters}  # fmt: skip
    # the model is the fp32 checkpoint itself: none of the source's teacher / student-building arguments
    skip = {"teacher", "student_model_name_or_path", "student_config", "student_layers", "model_config"}
    hparams = {k: v for k, v in source.items() if k in accepted and k not in skip}
    hparams.update(_class_path="lightning_modules.QATModule", model_name_or_path=args.model)
    config = dict(checkpoint["hf_config"])
    for key in ("shrink_pruned", "auto_map"):  # a pruning stage's checkpoint: the smaller shapes it became
        if getattr(model.config, key, None):
            config[key] = getattr(model.config, key)
    save_int8_checkpoint(model, out, hparams, quantization, config, checkpoint.get("tokenizer_files"))
    print(f"wrote {out} ({SCHEME}, post-training)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    onnx = commands.add_parser("onnx", help="export to ONNX and check parity on the validation split")
    onnx.add_argument("--model", required=True, help="a .ckpt or model folder of this project (fp32 or int8)")
    onnx.add_argument(
        "--out",
        required=True,
        help="the ONNX folder to write (model.onnx, config.json, tokenizer, README.md)",
    )
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
    onnx.add_argument(
        "--int8-kernel",
        choices=INT8_KERNELS,
        default="u8u8",
        help="MatMulInteger operand types: u8u8 is exact on every CPU (default); u8s8 only on VNNI/AMX CPUs",
    )
    onnx.add_argument(
        "--push_to_hub", metavar="REPO_ID", help="also upload the folder to this Hub repository"
    )
    onnx.add_argument("--fuse", action="store_true", help="ONNX Runtime's transformer fusions (attention, "
                      "LayerNorm, GELU), kept only if the parity check passes")  # fmt: skip
    onnx.add_argument("--fp16", action="store_true", help="float16 weights and compute (fp32 models; for GPUs: "
                      "ONNX Runtime's CPU provider runs it too, slowly), int64 ids in, float32 logits out")  # fmt: skip
    onnx.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                      help="ONNX Runtime provider the parity check runs on (cuda / tensorrt: onnxruntime-gpu)")  # fmt: skip
    onnx.add_argument("--threads", type=int, default=1)
    onnx.add_argument("--overwrite", action="store_true")
    ptq = commands.add_parser("ptq", help="int8 dynamic quantization of an fp32 checkpoint (no training)")
    ptq.add_argument("--model", required=True, help="an fp32 .ckpt of this project")
    ptq.add_argument("--out", required=True, help="the int8 .ckpt to write")
    ptq.add_argument("--fp32-embeddings", action="store_true", help="keep word embeddings in fp32")
    ptq.add_argument("--quantize-head", action="store_true", help="also int8 the classifier head")
    ptq.add_argument("--overwrite", action="store_true")
    push = commands.add_parser("push", help="upload a model folder or ONNX folder to the Hugging Face Hub")
    push.add_argument("--folder", required=True, help="OUT_DIR/model of a stage, or an ONNX folder")
    push.add_argument("--repo_id", required=True, help="user/name on the Hub (`huggingface-cli login` first)")
    args = parser.parse_args(argv)
    try:
        {"onnx": onnx_command, "ptq": ptq_command, "push": push_command}[args.command](args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1 if str(e).startswith("parity") else 2)


if __name__ == "__main__":
    main()
