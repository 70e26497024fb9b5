"""Augmentation of the training rows: reproducible per seed, NER copies keep valid IOB2 tags and
their entity words (mention swaps change whole mentions, type for type), masked-LM replacement with
a tiny MLM, the on-disk cache, and a masked LM with another tokenizer refused."""

import pytest
from transformers import BertConfig, BertForMaskedLM

from datamodules import InputError, SequenceClassificationDataModule, TokenClassificationDataModule
from datamodules import demo as demo_data
from datamodules.augment import MaskedWordFiller, augment_rows, spans
from datamodules.tokenizers import load_tokenizer

NER = demo_data.demo_split("token", "train")[:200]
SENTIMENT = demo_data.demo_split("sequence", "train")[:200]


def valid_iob2(tags: list[str]) -> bool:
    return all(
        not tag.startswith("I-") or (j > 0 and tags[j - 1] != "O" and tags[j - 1][2:] == tag[2:])
        for j, tag in enumerate(tags)
    )


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory):
    """A tiny random BERT masked LM saved with the demo tokenizer."""
    folder = tmp_path_factory.mktemp("mlm")
    tokenizer = load_tokenizer("demo", folder / "cache")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForMaskedLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return str(folder / "model"), tokenizer


@pytest.mark.parametrize("methods", [["mask", "swap"], ["mention"], ["mask", "swap", "mention"]])
def test_ner_copies_are_valid_iob2_and_reproducible_per_seed(methods):
    copies = augment_rows("token", NER, methods, 2, seed=3, mask_token="[MASK]")
    assert copies == augment_rows("token", NER, methods, 2, seed=3, mask_token="[MASK]")
    assert copies != augment_rows("token", NER, methods, 2, seed=4, mask_token="[MASK]")
    assert len(copies) > len(NER)  # most copies differ from their row
    labels = set(demo_data.NER_LABELS)
    for copy in copies:
        assert (
            len(copy["tokens"]) == len(copy["tags"])
            and valid_iob2(copy["tags"])
            and set(copy["tags"]) <= labels
        )
    if "mention" not in methods:  # words tagged O change; entity words and every tag stay
        originals = {tuple(r["tags"]): r for r in NER}
        for copy in copies:
            source = next(
                r
                for r in NER
                if r["tags"] == copy["tags"]
                and all(
                    w == c for w, c, t in zip(r["tokens"], copy["tokens"], r["tags"], strict=True) if t != "O"
                )
            )
            assert source and tuple(copy["tags"]) in originals
    else:  # whole mentions are swapped for training mentions of the same type
        mentions = {(kind, tuple(r["tokens"][a:b])) for r in NER for a, b, kind in spans(r["tags"])}
        for copy in copies:
            for a, b, kind in spans(copy["tags"]):
                assert (kind, tuple(copy["tokens"][a:b])) in mentions


def test_sequence_copies_follow_tang_et_al_and_go_in_unlabelled():
    copies = augment_rows("sequence", SENTIMENT, ["mask", "swap", "ngram"], 4, seed=0, mask_token="[MASK]")
    assert copies == augment_rows(
        "sequence", SENTIMENT, ["mask", "swap", "ngram"], 4, seed=0, mask_token="[MASK]"
    )
    assert all(c["label"] is None for c in copies) and len(copies) > 2 * len(SENTIMENT)
    vocabulary = {w for r in SENTIMENT for w in r["text"].split()} | {"[MASK]"}
    assert all(set(c["text"].split()) <= vocabulary for c in copies)
    longest = max(len(r["text"].split()) for r in SENTIMENT)
    assert any(len(c["text"].split()) <= 5 for c in copies) and all(
        len(c["text"].split()) <= longest for c in copies
    )
    with pytest.raises(InputError, match="not a sequence augmentation"):
        SequenceClassificationDataModule(tokenizer="demo", augment=["mention"])
    with pytest.raises(InputError, match="not a token augmentation"):
        TokenClassificationDataModule(tokenizer="demo", augment=["ngram"])
    with pytest.raises(InputError, match="augment_factor is 0"):
        SequenceClassificationDataModule(tokenizer="demo", augment=["mask"], augment_factor=0)


def test_masked_lm_replacement_is_reproducible_and_fills_whole_words(masked_lm, tmp_path):
    path, tokenizer = masked_lm
    filler = MaskedWordFiller(path, tokenizer)
    runs = [augment_rows("token", NER[:50], ["mlm"], 2, 7, "[MASK]", filler) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]
    for copy in runs[0]:
        assert MaskedWordFiller.MARK not in copy["tokens"] and valid_iob2(copy["tags"])
        assert not any(w.startswith("##") or w in tokenizer.all_special_tokens for w in copy["tokens"])
    text = augment_rows("sequence", SENTIMENT[:50], ["mlm"], 1, 7, "[MASK]", filler)
    assert text and all(MaskedWordFiller.MARK not in c["text"] for c in text)


def test_augmented_copies_join_the_training_split_and_are_cached(masked_lm, tmp_path):
    path, _ = masked_lm
    options = {"tokenizer": "demo", "cache_dir": str(tmp_path), "max_train_samples": 100}
    dm = TokenClassificationDataModule(
        augment=["swap", "mention", "mlm"], augment_factor=2, masked_lm=path, **options
    )
    rows = dm.raw_split("train")
    assert len(rows) > 100 and not any(r.get("transfer") for r in rows)  # NER copies keep their tags
    assert len(list((tmp_path / "augmented").glob("*.json"))) == 1
    again = TokenClassificationDataModule(
        augment=["swap", "mention", "mlm"], augment_factor=2, masked_lm=path, **options
    )
    assert again.raw_split("train") == rows
    assert len(dm.encoded_split("train")) == len(rows)
    sequence = SequenceClassificationDataModule(augment=["mask", "ngram"], augment_factor=2, **options)
    assert sum(r.get("transfer", False) for r in sequence.raw_split("train")) > 100


def test_a_masked_lm_with_another_tokenizer_is_refused(masked_lm, tmp_path):
    path, _ = masked_lm
    other = load_tokenizer("demo", tmp_path)
    other.add_tokens(["zyzzyva"])  # one word more: another vocabulary
    with pytest.raises(InputError, match="tokenizes differently from the student"):
        MaskedWordFiller(path, other)
    with pytest.raises(InputError, match="not a masked language model folder"):
        MaskedWordFiller(str(tmp_path / "nothing"), other)
