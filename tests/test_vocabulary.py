"""Vocabulary pruning: the kept ids, the renumbered tokenizer, exact logits on covered text, and the
``shrink prune-vocab`` command (its check, its folder in plain transformers, int8 ONNX after it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.demo import demo_tokenizer
from lightning_modules.artifacts.classifiers import load_trained
from lightning_modules.methods.vocabulary import kept_token_ids, prune_vocabulary, pruned_tokenizer
from tests.conftest import ROOT, run_script
from tests.test_distill import fine_tuned_checkpoint

CORPUS = ["the movie was great", "the plot was not funny , but the acting was"]
UNSEEN = "a charming film with brilliant acting"  # words the corpus lacks, of letters it has


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("vocab")
    return tmp, fine_tuned_checkpoint("sequence", tmp)


def test_kept_ids_are_the_corpus_tokens_specials_their_characters_and_the_first_n():
    tokenizer = demo_tokenizer(Path("~/.cache/shrink").expanduser())
    ids = [tokenizer(text)["input_ids"] for text in CORPUS]
    keep = kept_token_ids(tokenizer, ids)
    vocab = tokenizer.get_vocab()
    chars = set("".join(CORPUS).replace(" ", ""))
    expected = {i for row in ids for i in row} | set(tokenizer.all_special_ids)
    expected |= {i for token, i in vocab.items() if len(token.removeprefix("##")) == 1 and token[-1] in chars}
    assert keep == sorted(expected) and len(keep) < len(vocab)
    assert kept_token_ids(tokenizer, ids, keep_first=100) == sorted(expected | set(range(100)))
    twice = [i for i in keep if sum(row.count(i) for row in ids) >= 2]
    assert set(kept_token_ids(tokenizer, ids, min_count=2)) - expected == set()
    assert set(twice) <= set(kept_token_ids(tokenizer, ids, min_count=2))


def test_covered_text_keeps_its_logits_and_unseen_words_are_spelled_out(fitted):
    tmp, path = fitted
    tokenizer = demo_tokenizer(tmp)
    full = load_trained(path).model
    keep = kept_token_ids(tokenizer, [tokenizer(text)["input_ids"] for text in CORPUS])
    smaller_tokenizer = pruned_tokenizer(tokenizer, keep)
    smaller = load_trained(path).model
    prune_vocabulary(smaller, keep)
    assert smaller.get_input_embeddings().weight.shape[0] == len(keep) == len(smaller_tokenizer)
    assert smaller.config.vocab_size == len(keep) and smaller.config.pad_token_id == keep.index(
        tokenizer.pad_token_id
    )
    # covered text (single and pairs, padded): the same ids renumbered, the same logits
    for texts in (CORPUS, [CORPUS], ["the movie", "the plot was great"]):
        args = (texts[0], texts[0][::-1]) if len(texts) == 1 else (texts,)
        a = tokenizer(*args, padding=True, return_tensors="pt")
        b = smaller_tokenizer(*args, padding=True, return_tensors="pt")
        assert torch.equal(torch.tensor(keep)[b["input_ids"]], a["input_ids"])
        assert torch.equal(b["token_type_ids"], a["token_type_ids"])
        with torch.no_grad():
            torch.testing.assert_close(smaller(**b).logits, full(**a).logits, atol=1e-6, rtol=0)
    # unseen words fall apart into kept pieces, never [UNK], and decode to the same text
    ids = smaller_tokenizer(UNSEEN)["input_ids"]
    assert smaller_tokenizer.unk_token_id not in ids and len(ids) > len(tokenizer(UNSEEN)["input_ids"])
    assert smaller_tokenizer.decode(ids, skip_special_tokens=True) == UNSEEN


def test_prune_vocab_command_writes_a_standard_folder_that_int8_onnx_takes(fitted):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tmp, path = fitted
    data = [
        "--data",
        str(ROOT / "configs" / "demo-sequence" / "qat.yaml"),
        "--set",
        f"cache_dir={tmp}",
        "--set",
        "max_train_samples=40",
        "--set",
        "max_eval_samples=64",
    ]
    out = tmp / "vocab"
    ladder = ["--keep-first", "0,200", "--max-drop", "-1"]  # each tried in turn; none can pass
    failed = run_script(
        "export.py", "prune-vocab", "--model", path, "--out", str(out), *data, *ladder, cwd=tmp
    )
    assert failed.returncode == 1 and "vocabulary check failed" in failed.stderr and not out.exists()
    tried = json.loads(failed.stdout[failed.stdout.index("{") : failed.stdout.rindex("}") + 1])["tried"]
    assert [t["keep_first"] for t in tried] == [0, 200] and tried[0]["vocabulary"] < tried[1]["vocabulary"]
    result = run_script(
        "export.py", "prune-vocab", "--model", path, "--out", str(out), *data, "--max-drop", "1", cwd=tmp
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    assert report["vocabulary"] < report["of"] == len(demo_tokenizer(tmp))
    assert report["max_logit_diff_same_tokens"] < 1e-5 and report["compared"] == 64
    # plain transformers: the smaller tokenizer and model belong together
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert len(tokenizer) == model.config.vocab_size == report["vocabulary"]
    assert pipeline("text-classification", model=str(out))(UNSEEN)[0]["label"] in ("negative", "positive")
    assert "vocabulary pruning" in (out / "README.md").read_text()
    # transfer text (unlabelled) of words the 40 rows lack: kept too, they keep their own pieces
    unseen = set(demo_tokenizer(tmp).get_vocab()) - set(tokenizer.get_vocab())
    words = " ".join(sorted(w for w in unseen if w.isalpha() and len(w) > 3)[:5])
    text = tmp / "transfer.txt"
    text.write_text(f"{words}\n")
    wider = tmp / "vocab-transfer"
    more = [*data, "--set", f"transfer_files=[{text}]", "--max-drop", "1"]
    result = run_script("export.py", "prune-vocab", "--model", path, "--out", str(wider), *more, cwd=tmp)
    assert result.returncode == 0, result.stderr[-2000:]
    grown = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    assert (grown["training_rows"], grown["transfer_rows"]) == (report["training_rows"], 1)
    assert grown["vocabulary"] > report["vocabulary"]
    pruned = AutoTokenizer.from_pretrained(wider)
    assert pruned.tokenize(words) == words.split() != tokenizer.tokenize(words) and len(words.split()) == 5
    again = run_script("export.py", "prune-vocab", "--model", path, "--out", str(out), *data, cwd=tmp)
    assert again.returncode == 2 and "exists: pass --overwrite" in again.stderr
    onnx = tmp / "onnx-int8"
    export = run_script(
        "export.py", "onnx", "--model", str(out), "--out", str(onnx), "--int8", *data, cwd=tmp
    )
    assert export.returncode == 0, export.stderr[-2000:]
    assert json.loads((onnx / "parity.json").read_text())["agreement"] >= 0.99
