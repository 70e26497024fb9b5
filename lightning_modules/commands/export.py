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
import copy
import inspect
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from datamodules import InputError, datamodule_from_config, parse_overrides
from datamodules.token import word_start_mask
from lightning_modules.artifacts.classifiers import load_classifier, load_trained, read_checkpoint
from lightning_modules.artifacts.model_folder import (
    CARD_NAME,
    checkpoint_tokenizer,
    model_card,
    parameters_and_bytes,
    replace_folder,
    save_tokenizer,
    write_model_folder,
)
from lightning_modules.artifacts.onnx_folder import (
    INT8_KERNELS,
    ONNX_FILE,
    OPSET,
    PROVIDERS,
    OnnxClassifier,
    export_onnx,
    fused_ops,
    input_names,
    parity,
    provider_name,
    pytorch_logits,
    session_providers,
)
from lightning_modules.cpu import cpu_name
from lightning_modules.methods.quantize import DEFAULT_SCHEME, SCHEMES, ptq, save_int8_checkpoint, scheme_name
from lightning_modules.methods.task_metrics import (
    computed_metrics,
    headline_metric,
    predicted,
    task_metrics,
    update_task_metrics,
)
from lightning_modules.methods.vocabulary import kept_token_ids, prune_vocabulary, pruned_tokenizer
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
        report.update(model=args.model, onnx=str(out), int8=int8, int8_kernel=args.int8_kernel if int8 else None,
                      scheme=scheme_name(quantization) if int8 else None,
                      fp16=args.fp16, provider=args.provider, task=task, cpu=cpu_name(),
                      parameters=sum(p.numel() for p in model.parameters()))  # fmt: skip
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
    accepted = {name for cls in QATModule.__mro__ if "__init__" in vars(cls)  # with the **kwargs it passes on
                for name in inspect.signature(cls.__init__).parameters}  # fmt: skip
    # the model is the fp32 checkpoint itself: none of the source's teacher / student-building arguments
    skip = {"teacher", "student_model_name_or_path", "student_config", "student_layers", "model_config"}
    hparams = {k: v for k, v in source.items() if k in accepted and k not in skip}
    hparams.update(_class_path="lightning_modules.QATModule", model_name_or_path=args.model, scheme=args.scheme,
                   calibration_rows=args.calibration_rows)  # fmt: skip
    config = dict(checkpoint["hf_config"])
    for key in ("shrink_pruned", "auto_map"):  # a pruning stage's checkpoint: the smaller shapes it became
        if getattr(model.config, key, None):
            config[key] = getattr(model.config, key)
    save_int8_checkpoint(model, out, hparams, quantization, config, checkpoint.get("tokenizer_files"))
    print(f"wrote {out} ({SCHEMES[args.scheme]}, post-training)")


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
    return {"metric": key, "full": scores["full"], "pruned": scores["pruned"], "agreement": agree / max(total, 1),
            "compared": total, "rows_tokenized_differently": changed, "max_logit_diff_same_tokens": same_diff}  # fmt: skip


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
    overrides = parse_overrides(args.set)
    data = datamodule_from_config(args.data, {"tokenizer": trained.tokenizer, **overrides})
    data.setup("validate")
    model = trained.model
    train_ids = data.encoded_split(data.splits["fit"])["input_ids"]
    keep = kept_token_ids(data.tokenizer, train_ids, args.min_count, args.keep_first)
    tokenizer = pruned_tokenizer(data.tokenizer, keep)
    smaller = copy.deepcopy(model)  # the full model stays as the reference
    prune_vocabulary(smaller, keep)
    report = {"model": args.model, "vocabulary": len(keep), "of": len(data.tokenizer), "min_count": args.min_count,
              "keep_first": args.keep_first, "training_rows": len(train_ids), "cpu": cpu_name()}  # fmt: skip

    with tempfile.TemporaryDirectory() as folder:  # the pruned tokenizer, as the datamodule loads one
        save_tokenizer(tokenizer, folder)
        smaller_data = datamodule_from_config(args.data, {"tokenizer": folder, **overrides})
        smaller_data.setup("validate")
        report.update(vocabulary_parity(model, data, smaller, smaller_data, keep, trained.task))
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
        },  # fmt: skip
        lineage=smaller.config.shrink_lineage,
        command="shrink export " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    write_model_folder(smaller, tokenizer, out, card)
    print(f"wrote {out}: {len(keep)} of {report['of']} tokens")


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
    onnx.add_argument("--scheme", choices=sorted(SCHEMES), default=None,
                      help=f"int8 scheme of --int8 (default {DEFAULT_SCHEME}); an int8 model keeps its own")  # fmt: skip
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
    onnx.add_argument("--fuse", action="store_true", help="ONNX Runtime's transformer fusions (attention, "
                      "LayerNorm, GELU), kept only if the parity check passes")  # fmt: skip
    onnx.add_argument("--fp16", action="store_true", help="float16 weights and compute (fp32 models; for GPUs: "
                      "ONNX Runtime's CPU provider runs it too, slowly), int64 ids in, float32 logits out")  # fmt: skip
    onnx.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                      help="ONNX Runtime provider the parity check runs on (cuda / tensorrt: onnxruntime-gpu)")  # fmt: skip
    onnx.add_argument("--threads", type=int, default=1)
    onnx.add_argument("--overwrite", action="store_true")
    ptq = commands.add_parser("ptq", help="int8 quantization of an fp32 checkpoint (no training)")
    ptq.add_argument("--model", required=True, help="an fp32 .ckpt of this project")
    ptq.add_argument("--out", required=True, help="the int8 .ckpt to write")
    ptq.add_argument("--scheme", choices=sorted(SCHEMES), default=DEFAULT_SCHEME,
                     help="static (calibrated activation scales: needs --data) or per-token")  # fmt: skip
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
    vocab = commands.add_parser("prune-vocab", help="keep only the tokens the training split uses (smaller "
                                "embeddings), checked on the validation split")  # fmt: skip
    vocab.add_argument("--model", required=True, help="an fp32 .ckpt or model folder of this project")
    vocab.add_argument("--out", required=True, help="the model folder to write")
    vocab.add_argument(
        "--data", required=True, help="run config whose data: section gives the train and validation splits"
    )
    vocab.add_argument("--set", action="append", default=[], help="data init arg override KEY=VALUE")
    vocab.add_argument(
        "--min-count", type=int, default=1, help="keep tokens seen at least this often in training"
    )
    vocab.add_argument("--keep-first", type=int, default=0, help="also keep the tokenizer's first N ids (BERT-family "
                       "vocabularies list common pieces first): fewer unseen words fall apart into characters")  # fmt: skip
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
