"""What a stage hands on, and what users take away: a Hugging Face model folder (``config.json`` with
``id2label``, ``model.safetensors``, the tokenizer files and a ``README.md`` model card) that
``transformers.pipeline`` loads without this project; the tokenizer stored inside checkpoints, so a
``.ckpt`` moved to another machine still exports and benchmarks; and one loader that takes a
``.ckpt`` or such a folder wherever a trained model is expected.

An int8 model (QAT, PTQ) is written with its int8 weights dequantized to fp32 and the scheme in
``config.json`` (``shrink_quantization``): plain transformers runs it in fp32 with exactly the int8
weights, and this project loads the identical int8 model (its int8 tensors and scales are
stored beside them in ``int8_weights.pt``). Its int8 deployment is the ONNX folder of
``shrink export onnx``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lightning_modules.methods.pruning import REMOTE_CODE
from lightning_modules.methods.quantize import dequantized, is_quantized, weights_bytes

CARD_NAME = "README.md"
INT8_FILE = "int8_weights.pt"  # an int8 folder's torchao tensors, for this project; transformers ignores it


# --- tokenizers inside checkpoints ----------------------------------------------------------------
def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    """The files ``tokenizer.save_pretrained`` writes, as bytes (stored in every checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def tokenizer_folder(files: dict[str, bytes], cache_dir: str | Path = "~/.cache/shrink") -> str:
    """A folder holding ``files`` (a checkpoint's tokenizer), written once per content hash."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    folder = Path(cache_dir).expanduser() / "tokenizers" / digest.hexdigest()[:20]
    if not folder.is_dir():
        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote the same folder first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def checkpoint_tokenizer(checkpoint: dict[str, Any], cache_dir: str | Path = "~/.cache/shrink") -> str | None:
    """The tokenizer a checkpoint was trained with: its stored files (a folder), else the name it
    recorded (checkpoints of earlier versions), else None."""
    files = checkpoint.get("tokenizer_files")
    if files:
        return tokenizer_folder(files, cache_dir)
    return checkpoint.get("hf_config", {}).get("shrink_tokenizer")


def save_tokenizer(tokenizer: Any, folder: str | Path) -> None:
    """``tokenizer.save_pretrained(folder)``, loadable by transformers 4 as well: transformers 5 names
    a plain fast tokenizer ``TokenizersBackend``, a class 4.x (and optimum, which needs it) lacks;
    ``PreTrainedTokenizerFast`` names the same class in both."""
    tokenizer.save_pretrained(folder)
    config = Path(folder) / "tokenizer_config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        if values.get("tokenizer_class") == "TokenizersBackend":
            values["tokenizer_class"] = "PreTrainedTokenizerFast"
            config.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n")


# --- model folders -------------------------------------------------------------------------------
def replace_folder(build, folder: str | Path) -> Path:
    """Call ``build(tmp)`` on a temporary sibling of ``folder``, then swap it in: a failed write
    leaves the previous folder intact."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
        old = folder.with_name(f".{folder.name}.old{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_model_folder(
    model: torch.nn.Module,
    tokenizer: Any,
    folder: str | Path,
    card: str,
    quantization: dict[str, Any] | None = None,
) -> Path:
    """``model`` (fp32; an int8 torchao model is written dequantized with ``shrink_quantization``),
    its tokenizer and the model card, as a Hugging Face folder."""

    def build(tmp: Path) -> None:
        source = dequantized(model) if is_quantized(model) else model
        config = source.config
        config.architectures = [type(source).__name__]  # what pipeline and AutoModel pick the head by
        if quantization:
            config.shrink_quantization = {k: quantization[k] for k in ("scheme", "embeddings", "head")}
        source.save_pretrained(tmp)
        if getattr(config, "shrink_pruned", None):  # the code that rebuilds its shapes (auto_map)
            shutil.copy(REMOTE_CODE, tmp / REMOTE_CODE.name)
        if quantization:
            state = {f"model.{k}": v for k, v in model.state_dict().items()}
            torch.save({"quantization": dict(quantization), "state_dict": state}, tmp / INT8_FILE)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")

    return replace_folder(build, folder)


def _table(values: dict[str, Any]) -> str:
    rows = [f"| {k} | {round(v, 4) if isinstance(v, float) else v} |" for k, v in values.items()]
    return "\n".join(["| | |", "|---|---|", *rows])


def model_card(
    *,
    title: str,
    task: str,
    labels: list[str],
    facts: dict[str, Any],
    metrics: dict[str, float],
    lineage: list[dict[str, Any]],
    command: str | None = None,
    config: str | None = None,
    usage: str | None = None,
) -> str:
    """A README.md for a model folder: what the model is, how well it scores, where it came from,
    and how it was made. The front matter is the Hub's model-card metadata."""
    pipeline_tag = "text-classification" if task == "sequence" else "token-classification"
    lines = [
        "---",
        f"pipeline_tag: {pipeline_tag}",
        "library_name: transformers",
        "tags: [shrink]",
        "---",
        f"# {title}",
        "",
        f"A {pipeline_tag.replace('-', ' ')} model written by [shrink](https://github.com/) "
        f"({'per-word tags' if task == 'token' else 'one label per text'}).",
        "",
        f"Labels ({len(labels)}): {', '.join(f'`{x}`' for x in labels)}",
        "",
        _table(facts),
        "",
        "## Scores",
        "",
        _table(metrics) if metrics else "Not evaluated.",
        "",
        "## Lineage",
        "",
        *[
            f"{i + 1}. **{step.get('stage')}**: "
            + ", ".join(f"{k} `{v}`" for k, v in step.items() if k != "stage" and v is not None)
            for i, step in enumerate(lineage)
        ],
        "",
        "## Use",
        "",
        "```python",
        usage
        or "from transformers import pipeline\n"
        f'classifier = pipeline("{pipeline_tag}", model="PATH/TO/THIS/FOLDER"'
        + (', aggregation_strategy="first")' if task == "token" else ")"),
        "```",
    ]
    if command:
        lines += ["", "## How it was made", "", "```bash", command, "```"]
    if config:
        lines += ["", "Resolved config:", "", "```yaml", config.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def stage_card(
    module: Any, datamodule: Any, out_dir: str, metrics: dict[str, Any], command: str, config: str | None
) -> str:
    """The model card of a stage's ``model/`` folder: what the module trained, on what, how well."""
    int8 = module.int8_record()
    model = module.deployable_model()
    facts = {
        "task": f"{module.task} classification",
        "architecture": type(model).__name__,
        **parameters_and_bytes(model),
        "data": datamodule.source,
        "tokenizer": datamodule.tokenizer_name,
        "int8": int8["scheme"] if int8 else "no (fp32)",
        **module.card_facts(),
    }
    usage = None
    if getattr(model.config, "shrink_pruned", None):  # its shapes are rebuilt by pruned_encoder.py
        tag = "text-classification" if module.task == "sequence" else "token-classification"
        usage = (
            "from transformers import pipeline\n# pruned shapes: pruned_encoder.py in this folder rebuilds them\n"
            f'classifier = pipeline("{tag}", model="PATH/TO/THIS/FOLDER", trust_remote_code=True'
            + (', aggregation_strategy="first")' if module.task == "token" else ")")
        )
    return model_card(
        title=f"{Path(out_dir).name} ({type(module).__name__})",
        task=module.task,
        labels=module.label_names,
        facts=facts,
        metrics={k: round(float(v), 4) for k, v in metrics.items()},
        lineage=list(getattr(module.model.config, "shrink_lineage", None) or module.lineage()),
        command=command,
        config=config,
        usage=usage,
    )


def parameters_and_bytes(model: torch.nn.Module) -> dict[str, Any]:

    params = sum(p.numel() for p in model.parameters())
    return {"parameters": f"{params / 1e6:.2f}M", "weights size": f"{weights_bytes(model) / 1e6:.2f} MB"}


def write_metrics(folder: str, name: str, metrics: dict[str, Any]) -> str:
    """``folder/{name}_metrics.json`` (written whole or not at all), for scripts to read."""
    path = os.path.join(folder, f"{name}_metrics.json")
    os.makedirs(folder or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
