"""Export for deployment, and the post-training quantization (PTQ) baseline.

    # an ONNX folder (fp32, or int8 when the model is int8 or --int8 is given), checked on the validation set
    shrink export onnx --model outputs/sst2/qat/int8.ckpt --out outputs/sst2/qat/onnx-int8 \\
        --data configs/sst2/qat.yaml [--push_to_hub user/sst2-int8]
    # upload a stage's model folder (or an ONNX folder) to the Hugging Face Hub
    shrink export push --folder outputs/sst2/distill/model --repo_id user/sst2-student
    # PTQ: int8 of an fp32 checkpoint, no training (the QAT schemes; static calibrates on training rows)
    shrink export ptq --model outputs/sst2/distill/checkpoints/last.ckpt --out outputs/sst2/ptq.int8.ckpt \
        --data configs/sst2/qat.yaml
    # vocabulary pruning: keep the word embeddings of the tokens the training split uses (fp32 in,
    # a model folder out; then QAT, or onnx --int8), checked on the validation split
    shrink prune-vocab --model outputs/sst2/prune/model --out outputs/sst2/prune/model-vocab \\
        --data configs/sst2/qat.yaml

The parity check runs the PyTorch model and the ONNX Runtime model over the validation split
and fails (exit 1, no folder written or replaced) below ``--min-agreement`` label agreement. The
folder loads in optimum's ``ORTModelFor{Sequence,Token}Classification`` and in ``shrink-classify``.
GPU deployment: ``--fp16`` writes a float16 graph (fp32 models) and ``--provider cuda`` or
``tensorrt`` runs the parity check on ONNX Runtime's GPU providers (onnxruntime-gpu in place of
onnxruntime; TensorRT builds its own fp16 engine); ``shrink benchmark --provider`` times them there.
The int8 graphs are CPU graphs: ONNX Runtime's int8 matmuls have no fast CUDA kernel.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import sys
from pathlib import Path

from datamodules import InputError, datamodule_from_config, parse_overrides
from lightning_modules.artifacts.classifiers import load_classifier, load_trained, read_checkpoint
from lightning_modules.artifacts.hub import push_folder
from lightning_modules.artifacts.model_folder import (
    CARD_NAME,
    checkpoint_tokenizer,
    model_card,
    replace_folder,
    save_tokenizer,
)
from lightning_modules.artifacts.onnx_folder import (
    INT8_KERNELS,
    OPSET,
    export_onnx,
    fused_ops,
    input_names,
    parity,
    pytorch_logits,
)
from lightning_modules.artifacts.onnx_session import (
    ONNX_FILE,
    PROVIDERS,
    OnnxClassifier,
    provider_name,
    session_providers,
)
from lightning_modules.commands.prune_vocab import prune_vocab_command
from lightning_modules.cpu import cpu_name
from lightning_modules.methods.quantize import DEFAULT_SCHEME, SCHEMES, ptq, save_int8_checkpoint, scheme_name
from lightning_modules.stages.qat import QATModule


def onnx_command(args: argparse.Namespace) -> None:
    session_providers(args.provider)  # before any work: a missing GPU provider is one line
    trained = load_trained(args.model)
    model, task = trained.model, trained.task
    int8 = args.int8 or trained.quantization is not None
    tokenizer = trained.tokenizer
    data = datamodule_from_config(
        args.data, {**({"tokenizer": tokenizer} if tokenizer else {}), **parse_overrides(args.set)}
    )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists: pass --overwrite or another --out")
    quantization = trained.quantization
    if quantization is not None and args.scheme not in (None, scheme_name(quantization)):
        raise InputError(
            f"--model {args.model} is a {scheme_name(quantization)} int8 model, not {args.scheme}: drop --scheme, or "
            "quantize its fp32 model with that scheme (QAT, or --int8 on the fp32 checkpoint)"
        )
    if int8 and quantization is None:  # PTQ first: the parity check then compares int8 with int8
        scheme = args.scheme or DEFAULT_SCHEME
        quantization = {"scheme": scheme, "embeddings": True, "head": False, "method": "ptq"}
        ptq(model, data.loader("validate", split=data.splits["fit"]), args.calibration_rows, scheme=scheme)
    data.setup("validate")
    report: dict = {}

    def build(tmp: Path) -> None:
        export_onnx(model, tmp / ONNX_FILE, int8_kernel=args.int8_kernel, fuse=args.fuse, fp16=args.fp16)
        report["fused_ops"] = fused_ops(tmp / ONNX_FILE) if args.fuse else {}
        reference = pytorch_logits(model.eval(), input_names(model))
        exported = OnnxClassifier(tmp, args.threads, "as-exported", args.provider)
        report.update(parity(reference, exported, data.loader("validate"), task))
        report.update(
            model=args.model,
            onnx=str(out),
            int8=int8,
            int8_kernel=args.int8_kernel if int8 else None,
            scheme=scheme_name(quantization) if int8 else None,
            fp16=args.fp16,
            provider=args.provider,
            task=task,
            cpu=cpu_name(),
            parameters=sum(p.numel() for p in model.parameters()),
        )
        checks = [report]
        here = OnnxClassifier(tmp, args.threads, provider=args.provider)  # as shrink runs it on this CPU
        if here.kernel != report["int8_kernel"]:
            report["as_run_here"] = {
                "int8_kernel": here.kernel,
                **parity(reference, here, data.loader("validate"), task),
            }
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
        card = onnx_card(model, task, report, quantization, out.name, tmp / ONNX_FILE)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")

    replace_folder(build, out)
    print(f"wrote {out}")
    if args.push_to_hub:
        push_folder(out, args.push_to_hub)


def onnx_card(model, task: str, report: dict, quantization: dict | None, name: str, onnx_path: Path) -> str:
    """The ONNX folder's model card: what it computes and how closely it matches PyTorch."""
    size = onnx_path.stat().st_size
    scheme = (
        SCHEMES[scheme_name(quantization or {})]
        if report["int8"]
        else "fp16"
        if report.get("fp16")
        else "fp32"
    )
    facts = {
        "runtime": f"ONNX Runtime ({provider_name(report.get('provider', 'cpu'))}), opset {OPSET}",
        "numerics": scheme,
        "int8 matmuls": {
            "u8u8": "uint8 x uint8 (exact on every CPU)",
            "u8s8": "uint8 x int8 (exact on VNNI/AMX CPUs; shrink runs it as u8u8 elsewhere)",
        }.get(report.get("int8_kernel"), "none"),
        "file size": f"{size / 1e6:.2f} MB",
        "fused ops (onnxruntime.transformers)": report.get("fused_ops") or "none",
        "exported from": report["model"],
    }
    parity_figures = {
        "agreement with PyTorch": report["agreement"],
        "max |logit difference|": report["max_logit_diff"],
        "compared predictions": report["compared"],
        "checked on": report["cpu"]
        + ("" if report.get("provider", "cpu") == "cpu" else f" + {report['provider']} GPU"),
    }
    if "as_run_here" in report:  # shrink runs the file with the other weight type on this CPU: checked too
        parity_figures[f"agreement run as {report['as_run_here']['int8_kernel']}"] = report["as_run_here"][
            "agreement"
        ]
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
        command="shrink export " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        usage=usage,
    )


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
    if args.scheme == "static" and not args.data:
        raise InputError("static PTQ calibrates on training rows: pass --data CONFIG (or --scheme per-token)")
    model = load_classifier(args.model, source["task"]).eval()
    batches = []
    if args.scheme == "static":
        tokenizer = checkpoint_tokenizer(checkpoint)
        data = datamodule_from_config(
            args.data, {**({"tokenizer": tokenizer} if tokenizer else {}), **parse_overrides(args.set)}
        )
        batches = data.loader("validate", split=data.splits["fit"])
    ptq(model, batches, args.calibration_rows, not args.fp32_embeddings, args.quantize_head, args.scheme)
    quantization = {
        "scheme": args.scheme,
        "embeddings": not args.fp32_embeddings,
        "head": args.quantize_head,
        "method": "ptq",
    }
    # `shrink validate/test/predict --ckpt_path` rebuild the model class from these hyper-parameters
    accepted = {
        name
        for cls in QATModule.__mro__
        if "__init__" in vars(cls)  # with the **kwargs it passes on
        for name in inspect.signature(cls.__init__).parameters
    }
    # the model is the fp32 checkpoint itself: none of the source's teacher / student-building arguments
    skip = {"teacher", "student_model_name_or_path", "student_config", "student_layers", "model_config"}
    hparams = {k: v for k, v in source.items() if k in accepted and k not in skip}
    hparams.update(
        _class_path="lightning_modules.QATModule",
        model_name_or_path=args.model,
        scheme=args.scheme,
        calibration_rows=args.calibration_rows,
    )
    config = dict(checkpoint["hf_config"])
    for key in ("shrink_pruned", "auto_map"):  # a pruning stage's checkpoint: the smaller shapes it became
        if getattr(model.config, key, None):
            config[key] = getattr(model.config, key)
    save_int8_checkpoint(model, out, hparams, quantization, config, checkpoint.get("tokenizer_files"))
    print(f"wrote {out} ({SCHEMES[args.scheme]}, post-training)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="shrink export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
        help="int8 ONNX from an fp32 checkpoint (PTQ with --scheme, as the ptq command does)",
    )
    onnx.add_argument(
        "--scheme",
        choices=sorted(SCHEMES),
        default=None,
        help=f"int8 scheme of --int8 (default {DEFAULT_SCHEME}); an int8 model keeps its own",
    )
    onnx.add_argument(
        "--calibration-rows", type=int, default=512, help="training rows that calibrate static int8"
    )
    onnx.add_argument("--min-agreement", type=float, default=0.995, help="fail below this label agreement")
    onnx.add_argument(
        "--int8-kernel",
        choices=INT8_KERNELS,
        default="u8s8",
        help="int8 matmul operand types: u8s8 (default; exact on VNNI/AMX CPUs, where it is faster, and "
        "shrink runs it as u8u8 elsewhere) or u8u8 (exact in plain ONNX Runtime on every CPU)",
    )
    onnx.add_argument(
        "--push_to_hub", metavar="REPO_ID", help="also upload the folder to this Hub repository"
    )
    onnx.add_argument(
        "--fuse",
        action="store_true",
        help="ONNX Runtime's transformer fusions (attention, "
        "LayerNorm, GELU), kept only if the parity check passes",
    )
    onnx.add_argument(
        "--fp16",
        action="store_true",
        help="float16 weights and compute (fp32 models; for GPUs: "
        "ONNX Runtime's CPU provider runs it too, slowly), int64 ids in, float32 logits out",
    )
    onnx.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="cpu",
        help="ONNX Runtime provider the parity check runs on (cuda / tensorrt: onnxruntime-gpu)",
    )
    onnx.add_argument("--threads", type=int, default=1)
    onnx.add_argument("--overwrite", action="store_true")
    ptq = commands.add_parser("ptq", help="int8 quantization of an fp32 checkpoint (no training)")
    ptq.add_argument("--model", required=True, help="an fp32 .ckpt of this project")
    ptq.add_argument("--out", required=True, help="the int8 .ckpt to write")
    ptq.add_argument(
        "--scheme",
        choices=sorted(SCHEMES),
        default=DEFAULT_SCHEME,
        help="static (calibrated activation scales: needs --data) or per-token",
    )
    ptq.add_argument(
        "--data", help="run config whose data: section gives the training rows that calibrate static"
    )
    ptq.add_argument("--set", action="append", default=[], help="data init arg override KEY=VALUE")
    ptq.add_argument(
        "--calibration-rows", type=int, default=512, help="training rows that calibrate static int8"
    )
    ptq.add_argument("--fp32-embeddings", action="store_true", help="keep word embeddings in fp32")
    ptq.add_argument("--quantize-head", action="store_true", help="also int8 the classifier head")
    ptq.add_argument("--overwrite", action="store_true")
    vocab = commands.add_parser(
        "prune-vocab",
        help="keep only the tokens the training split uses (smaller "
        "embeddings), checked on the validation split",
    )
    vocab.add_argument("--model", required=True, help="an fp32 .ckpt or model folder of this project")
    vocab.add_argument("--out", required=True, help="the model folder to write")
    vocab.add_argument(
        "--data", required=True, help="run config whose data: section gives the train and validation splits"
    )
    vocab.add_argument("--set", action="append", default=[], help="data init arg override KEY=VALUE")
    vocab.add_argument(
        "--min-count", type=int, default=1, help="keep tokens seen at least this often in training"
    )
    vocab.add_argument(
        "--keep-first",
        default="0",
        help="also keep the tokenizer's first N ids (BERT-family vocabularies list common pieces first): "
        "fewer unseen words fall apart into characters; N1,N2,... tries each in turn and writes the "
        "first that passes the check",
    )
    vocab.add_argument(
        "--max-drop", type=float, default=0.005, help="fail if the validation metric drops more than this"
    )
    vocab.add_argument("--overwrite", action="store_true")
    push = commands.add_parser("push", help="upload a model folder or ONNX folder to the Hugging Face Hub")
    push.add_argument("--folder", required=True, help="OUT_DIR/model of a stage, or an ONNX folder")
    push.add_argument("--repo_id", required=True, help="user/name on the Hub (`huggingface-cli login` first)")
    args = parser.parse_args(argv)
    try:
        commands = {
            "onnx": onnx_command,
            "ptq": ptq_command,
            "push": push_command,
            "prune-vocab": prune_vocab_command,
        }
        commands[args.command](args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1 if str(e).startswith(("parity", "vocabulary check")) else 2)


if __name__ == "__main__":
    main()
