"""The GLUE tasks this project runs, in one place: each task's text columns (``task_to_keys`` of
transformers' ``run_glue.py``), label names in the hub's order, the metrics beside accuracy and
macro-F1, the metric that picks the best checkpoint, and the validation / test splits (GLUE's test
labels are hidden, so ``test`` scores the dev set; MNLI validates on matched and mismatched, logged as
``val/accuracy`` and ``val_mismatched/accuracy`` like run_glue.py's two evaluations, and tests on mismatched).
``configs/TASK/data.yaml`` are written from this table (a test keeps them equal).
STS-B is regression (labels None: one output, MSE, Pearson / Spearman / MSE)."""

from __future__ import annotations

GLUE_TASKS: dict[str, dict] = {
    "cola": {"keys": ("sentence", None), "labels": ["unacceptable", "acceptable"], "metrics": ["mcc"], "monitor": "mcc"},
    "sst2": {"keys": ("sentence", None), "labels": ["negative", "positive"], "metrics": [], "monitor": "accuracy"},
    "mrpc": {"keys": ("sentence1", "sentence2"), "labels": ["not_equivalent", "equivalent"], "metrics": ["f1"], "monitor": "f1"},
    "stsb": {"keys": ("sentence1", "sentence2"), "labels": None, "metrics": [], "monitor": "pearson"},  # regression 0..5
    "qqp": {"keys": ("question1", "question2"), "labels": ["not_duplicate", "duplicate"], "metrics": ["f1"], "monitor": "f1"},
    "mnli": {"keys": ("premise", "hypothesis"), "labels": ["entailment", "neutral", "contradiction"], "metrics": [],
             "monitor": "accuracy", "validation": ["validation_matched", "validation_mismatched"], "test": "validation_mismatched"},
    "qnli": {"keys": ("question", "sentence"), "labels": ["entailment", "not_entailment"], "metrics": [], "monitor": "accuracy"},
    "rte": {"keys": ("sentence1", "sentence2"), "labels": ["entailment", "not_entailment"], "metrics": [], "monitor": "accuracy"},
}  # fmt: skip


def data_config(task: str) -> dict:
    """The ``data:`` section of a GLUE task's recipes."""
    spec = GLUE_TASKS[task]
    text, pair = spec["keys"]
    init = {"dataset": "glue", "dataset_config": task, "text_column": text}
    if pair:
        init["text_pair_column"] = pair
    init["label_column"] = "label"
    init.update({"label_names": spec["labels"]} if spec["labels"] else {"regression": True})
    init.update(validation_split=spec.get("validation", "validation"),
                test_split=spec.get("test", "validation"), predict_split=spec.get("test", "validation"),
                max_length=128, batch_size=32, group_by_length=False, num_workers=2)  # fmt: skip
    return {"class_path": "datamodules.SequenceClassificationDataModule", "init_args": init}
