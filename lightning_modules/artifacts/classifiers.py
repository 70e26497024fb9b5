"""One loader for trained classifiers (a checkpoint of this project, a model folder, a hub name) and the
builder of a stage's model with readable labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.artifacts.checkpoints import check_checkpoint
from lightning_modules.artifacts.model_folder import INT8_FILE, checkpoint_tokenizer
from lightning_modules.artifacts.onnx_session import folder_task
from lightning_modules.methods.pruning import (
    model_from_config,
    prune_model,
    pruned_from_pretrained,
    pruned_state,
)
from lightning_modules.methods.quantize import (
    convert_to_int8,
    import_torchao,
    load_int8_state,
    scheme_name,
)


def vocab_digest(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary: the same tokenizer under another path or name matches."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def _auto_class(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task not in ("sequence", "token"):
        raise InputError(f"task must be 'sequence' or 'token', got {task!r}")
    return AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification


def read_checkpoint(path: str, role: str = "--model") -> dict[str, Any]:
    """One of this project's ``.ckpt`` files, memory-mapped, checked to record the model config and
    task that export and benchmark scripts need; one line for anything else."""
    if not str(path).endswith(".ckpt"):
        raise InputError(
            f"{role} {path} is not a .ckpt of this project: give one (it records task, labels, tokenizer)"
        )
    if not Path(path).is_file():
        raise InputError(f"{role} {path} does not exist: fix the path")
    checkpoint = check_checkpoint(path)
    if "hf_config" not in checkpoint or "task" not in checkpoint.get("hyper_parameters", {}):
        raise InputError(
            f"{role} {path} is a checkpoint of unknown type (no model config or task): "
            "use checkpoints written by `shrink fit` or shrink export ptq"
        )
    return checkpoint


def load_classifier(
    path: str, task: str, trust_remote_code: bool = False, role: str = "model", int8_ok: bool = False
) -> torch.nn.Module:
    """A trained classifier: a ``.ckpt`` of this project (rebuilt from the Hugging Face config stored
    in it, so the original model folder is not needed) or a folder / hub name with a classification head.
    An int8 checkpoint (QAT or PTQ) is refused unless ``int8_ok``: it can be evaluated, not trained."""
    from transformers import AutoConfig

    auto = _auto_class(task)
    if str(path).endswith(".ckpt"):
        if not Path(path).is_file():
            raise InputError(f"{role} checkpoint {path!r} does not exist: fix the path")
        checkpoint = check_checkpoint(path)  # one line for a corrupt file or pickled objects
        found = checkpoint.get("hyper_parameters", {}).get("task")
        if found != task:
            raise InputError(
                f"{role} checkpoint {path} is a {found}-classification model but the data is {task} "
                "classification: use a checkpoint of the same task"
            )
        if "hf_config" not in checkpoint:
            raise InputError(
                f"{role} checkpoint {path} holds no model config: it was not written by this project"
            )
        if "lora" in checkpoint:
            raise InputError(
                f"{role} checkpoint {path} holds LoRA adapters only (for resuming): use its run's model/ "
                "folder, where they are merged into the weights"
            )
        if "quantization" in checkpoint and not int8_ok:
            raise InputError(
                f"{role} checkpoint {path} is already int8-quantized: training (QAT, fine-tuning, "
                "distillation) needs the fp32 checkpoint it was made from"
            )
        config = dict(checkpoint["hf_config"])
        model = model_from_config(auto, AutoConfig.for_model(config.pop("model_type"), **config))
        prefix = "model."
        if "quantization" in checkpoint:
            load_int8_state(model, checkpoint, prefix)
            return model.eval()
        model.load_state_dict(
            {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        )
        masks = pruned_state(checkpoint["state_dict"])
        return prune_model(model, *masks) if masks else model  # a pruning stage's checkpoint
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError:
        raise InputError(
            f"{role} {path!r} is neither a .ckpt, a local model folder nor reachable on the hub: fix the path"
        ) from None
    heads = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}
    if not any(heads[task] in name for name in config.architectures or []):
        raise InputError(
            f"{role} {path!r} has no fine-tuned {task}-classification head (architectures: "
            f"{config.architectures}): fine-tune it first with `shrink fit`"
        )
    return pruned_from_pretrained(auto, path) or auto.from_pretrained(
        path, trust_remote_code=trust_remote_code
    )


def build_classifier(
    task: str,
    label_names: list[str],
    model_name_or_path: str | None = None,
    model_config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """An ``AutoModelFor{Sequence,Token}Classification`` from a hub name or folder, or from a
    config dict (``{"model_type": "bert", "hidden_size": 128, ...}``) for a from-scratch model.
    ``id2label`` is written into the model config so checkpoints and exports stay readable."""
    from transformers import AutoConfig

    auto = _auto_class(task)
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    if (model_name_or_path is None) == (model_config is None):
        raise InputError(
            "give exactly one of model.model_name_or_path (pretrained) or model.model_config (from scratch)"
        )
    if model_config is not None:
        config = dict(model_config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise InputError(
                "model.model_config needs a model_type, e.g. {model_type: bert, hidden_size: 128}"
            )
        return model_from_config(auto, AutoConfig.for_model(model_type, **config, **labels))
    if (Path(model_name_or_path) / INT8_FILE).is_file():
        raise InputError(
            f"model {model_name_or_path} is an int8 model folder: training (QAT, fine-tuning, distillation, "
            "pruning) needs the fp32 model it was made from"
        )
    pruned = pruned_from_pretrained(auto, model_name_or_path)  # a pruned folder: its own shapes
    if model_name_or_path.endswith(".ckpt") or pruned is not None:  # e.g. a distilled student
        model = pruned or load_classifier(model_name_or_path, task, trust_remote_code)
        found = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if found != list(label_names):
            raise InputError(
                f"checkpoint labels {found} differ from the data's labels {list(label_names)}: "
                "set data.label_names to the checkpoint's order"
            )
        return model.train()
    try:
        model = auto.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True, **labels
        )
    except OSError:
        raise InputError(
            f"model {model_name_or_path!r} is neither a local folder with a model nor reachable on "
            "the Hugging Face hub: fix model.model_name_or_path (offline? set HF_HUB_OFFLINE=1 "
            "and use a local folder)"
        ) from None
    # from_pretrained returns eval mode and Lightning keeps each module's mode: without this,
    # dropout would stay off during training
    return model.train()


# --- one loader for .ckpt files and model folders ----------------------------------------------------
@dataclass
class TrainedModel:
    """A trained classifier with what export, benchmark and prediction need to run it."""

    model: torch.nn.Module
    task: str
    tokenizer: str | None
    quantization: dict[str, Any] | None
    checkpoint: dict[str, Any] | None  # the .ckpt's contents; None for a folder


def load_trained(path: str, role: str = "--model", int8_ok: bool = True) -> TrainedModel:
    """A ``.ckpt`` of this project or a model folder it wrote (or any folder / hub name with a
    fine-tuned classification head). An int8 folder is re-quantized to its int8 model."""

    import_torchao()  # int8 tensors load with weights_only=True once torchao is imported
    if str(path).endswith(".ckpt"):
        checkpoint = read_checkpoint(path, role=role)
        task = checkpoint["hyper_parameters"]["task"]
        model = load_classifier(path, task, role=role, int8_ok=int8_ok)
        return TrainedModel(
            model.eval(), task, checkpoint_tokenizer(checkpoint), checkpoint.get("quantization"), checkpoint
        )
    from transformers import AutoConfig

    if Path(path).is_file():
        raise InputError(f"{role} {path} is a file but not a .ckpt: give a .ckpt or a model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        raise InputError(
            f"{role} {path} is neither a .ckpt nor a model folder (no config.json): give the model/ "
            "folder a stage wrote, or its .ckpt"
        ) from None
    task = folder_task(config)
    if task is None:
        raise InputError(
            f"{role} {path} has no classification head (architectures: {config.architectures}): "
            "give a fine-tuned classifier"
        )
    model = load_classifier(path, task, role=role).eval()
    quantization = getattr(config, "shrink_quantization", None)
    if quantization:
        if not int8_ok:
            raise InputError(
                f"{role} {path} holds an int8 model: training needs the fp32 model it was made from"
            )
        exact = Path(path) / INT8_FILE
        if exact.is_file():  # the int8 tensors themselves: bit-identical scales
            load_int8_state(model, torch.load(exact, map_location="cpu", weights_only=True))
        elif scheme_name(quantization) == "static":  # its activation scales live only in the int8 file
            raise InputError(
                f"{role} {path} is a static int8 folder without its {INT8_FILE}: export it again"
            )
        else:  # re-quantize the dequantized weights (scales may differ in the last float bit)
            convert_to_int8(model, quantization["embeddings"], quantization["head"])
    return TrainedModel(model, task, str(path), quantization or None, None)
