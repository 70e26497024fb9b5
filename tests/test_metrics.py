import random

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from lightning_modules.methods.metrics import EntityF1, entities, entity_types

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def test_entities_by_hand():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-ORG", "I-LOC", "B-LOC"]
    assert entities(tags, "strict") == {("PER", 0, 2), ("ORG", 4, 5), ("LOC", 6, 7)}
    # conlleval: a stray I- opens an entity
    assert entities(tags, "conlleval") == {
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("ORG", 4, 5),
        ("LOC", 5, 6),
        ("LOC", 6, 7),
    }


def test_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    metric = EntityF1()
    metric.update(pred, gold)
    result = metric.compute()  # 2 correct of 3 predicted, 3 gold
    assert result["precision"].item() == pytest.approx(2 / 3)
    assert result["recall"].item() == pytest.approx(2 / 3)
    assert result["f1"].item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("mode", ["strict", "conlleval"])
def test_matches_seqeval_on_random_sequences(mode):
    rng = random.Random(0)
    kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    for _ in range(300):
        gold = [[rng.choice(TAGS) for _ in range(rng.randint(1, 20))] for _ in range(rng.randint(1, 12))]
        pred = [[rng.choice(TAGS) if rng.random() < 0.4 else t for t in sentence] for sentence in gold]
        metric = EntityF1(mode)
        # two updates, as two validation batches
        metric.update(pred[: len(pred) // 2], gold[: len(gold) // 2])
        metric.update(pred[len(pred) // 2 :], gold[len(gold) // 2 :])
        result = metric.compute()
        assert result["f1"].item() == pytest.approx(f1_score(gold, pred, **kwargs), abs=1e-6)
        assert result["precision"].item() == pytest.approx(precision_score(gold, pred, **kwargs), abs=1e-6)
        assert result["recall"].item() == pytest.approx(recall_score(gold, pred, **kwargs), abs=1e-6)


def test_no_entities_gives_zero_not_nan():
    metric = EntityF1()
    metric.update([["O", "O"]], [["O", "O"]])
    assert metric.compute()["f1"].item() == 0.0


@pytest.mark.parametrize("mode", ["strict", "conlleval"])
def test_per_type_scores_match_seqeval_classification_report(mode):
    from seqeval.metrics import classification_report

    rng = random.Random(1)
    kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    types = entity_types(TAGS)
    assert types == ["LOC", "MISC", "ORG", "PER"]
    for _ in range(100):
        gold = [[rng.choice(TAGS) for _ in range(rng.randint(1, 20))] for _ in range(rng.randint(1, 12))]
        pred = [[rng.choice(TAGS) if rng.random() < 0.4 else t for t in sentence] for sentence in gold]
        metric = EntityF1(mode, types)
        metric.update(pred[: len(pred) // 2], gold[: len(gold) // 2])
        metric.update(pred[len(pred) // 2 :], gold[len(gold) // 2 :])
        result = metric.compute()
        report = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
        for kind in types:
            expected = report.get(kind, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
            assert result[f"{kind}/precision"].item() == pytest.approx(expected["precision"], abs=1e-6)
            assert result[f"{kind}/recall"].item() == pytest.approx(expected["recall"], abs=1e-6)
            assert result[f"{kind}/f1"].item() == pytest.approx(expected["f1-score"], abs=1e-6)
        assert result["f1"].item() == pytest.approx(f1_score(gold, pred, **kwargs), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_glue_metrics_match_scikit_learn_on_random_data(seed):
    """CoLA's Matthews correlation and MRPC / QQP's positive-class F1, as the module logs them
    (accumulated over batches), against scikit-learn on the whole set."""
    import torch
    from sklearn.metrics import accuracy_score, matthews_corrcoef
    from sklearn.metrics import f1_score as sk_f1

    from lightning_modules.methods.task_metrics import computed_metrics, task_metrics

    rng = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (257,), generator=rng)
    predictions = torch.where(torch.rand(257, generator=rng) < 0.7, labels, 1 - labels)
    metrics = task_metrics("sequence", ["not_equivalent", "equivalent"], extra=["mcc", "f1"]).clone(
        prefix="val/"
    )
    for start in range(0, 257, 50):  # batches of 50 and a remainder
        metrics.update(predictions[start : start + 50], labels[start : start + 50])
    values = {k: float(v) for k, v in computed_metrics(metrics, "val/").items()}
    assert values["val/mcc"] == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-6)
    assert values["val/f1"] == pytest.approx(sk_f1(labels, predictions), abs=1e-6)
    assert values["val/accuracy"] == pytest.approx(accuracy_score(labels, predictions), abs=1e-6)
    assert values["val/f1_macro"] == pytest.approx(sk_f1(labels, predictions, average="macro"), abs=1e-6)
    # three classes (MNLI-like): MCC is the multiclass one; a positive-class F1 is refused
    labels3 = torch.randint(0, 3, (200,), generator=rng)
    predictions3 = torch.where(
        torch.rand(200, generator=rng) < 0.6, labels3, torch.randint(0, 3, (200,), generator=rng)
    )
    metrics3 = task_metrics("sequence", ["a", "b", "c"], extra=["mcc"])
    metrics3.update(predictions3, labels3)
    assert float(metrics3.compute()["mcc"]) == pytest.approx(
        matthews_corrcoef(labels3, predictions3), abs=1e-6
    )
    with pytest.raises(Exception, match="positive class's F1 of two labels"):
        task_metrics("sequence", ["a", "b", "c"], extra=["f1"])
