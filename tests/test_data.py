"""Readers and DataModules on small files written by the tests."""

import random
from pathlib import Path

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules import InputError, SequenceClassificationDataModule, TokenClassificationDataModule
from datamodules.readers import read_conll, read_table
from datamodules.sampler import LengthGroupedSampler

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


BRUSSELS NNP B-NP B-LOC
"""


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_conll_reader_sentences_docstart_and_tag_column(tmp_path):
    path = write(tmp_path / "a.txt", CONLL)
    assert read_conll(path, tag_column=3) == [
        {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["BRUSSELS"], "tags": ["B-LOC"]},
    ]
    assert read_conll(path, tag_column=2)[1]["tags"] == ["B-NP", "I-NP"]  # chunk column


def test_conll_reader_names_file_and_line_of_a_bad_row(tmp_path):
    path = write(tmp_path / "bad.txt", "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(InputError, match=r"bad\.txt:2: expected 4 columns .* found 3"):
        read_conll(path)
    with pytest.raises(InputError, match="tag_column=7"):
        read_conll(write(tmp_path / "ok.txt", "EU B-ORG\n"), tag_column=7)


def test_tsv_keeps_bare_quotes_and_strips_cells(tmp_path):
    path = write(tmp_path / "a.tsv", 'sentence\tlabel\nit \'s a " charming " film \t1\nbad \t0\n')
    assert read_table(path) == [
        {"sentence": 'it \'s a " charming " film', "label": "1"},
        {"sentence": "bad", "label": "0"},
    ]


def test_csv_and_jsonl(tmp_path):
    assert read_table(write(tmp_path / "a.csv", 'text,label\n"good, really",pos\n')) == [
        {"text": "good, really", "label": "pos"}
    ]
    assert read_table(write(tmp_path / "a.jsonl", '{"text": "x", "label": 1}\n\n{"text": "y"}\n')) == [
        {"text": "x", "label": 1},
        {"text": "y"},
    ]
    with pytest.raises(InputError, match=r"a2\.jsonl:1: not a JSON object"):
        read_table(write(tmp_path / "a2.jsonl", "{oops\n"))


def sequence_module(tmp_path, train: str, **kwargs) -> SequenceClassificationDataModule:
    files = {"train": write(tmp_path / "train.tsv", train)}
    return SequenceClassificationDataModule(
        data_files=files, tokenizer="demo", cache_dir=str(tmp_path / "c"), **kwargs
    )


def test_labels_read_from_data_or_config(tmp_path):
    dm = sequence_module(tmp_path, "text\tlabel\ngood\tpos\nbad\tneg\nok\tpos\n")
    assert dm.label_names == ["neg", "pos"]
    assert dm.encoded_split("train")["labels"] == [1, 0, 1]
    # integers index a configured label list
    dm = sequence_module(tmp_path, "text\tlabel\ngood\t1\nbad\t0\n", label_names=["negative", "positive"])
    assert dm.encoded_split("train")["labels"] == [1, 0]


def test_label_not_in_list(tmp_path):
    dm = sequence_module(tmp_path, "text\tlabel\ngood\tpos\nbad\tmeh\n", label_names=["neg", "pos"])
    with pytest.raises(
        InputError, match=r"label 'meh' in split 'train' is not in the label list \['neg', 'pos'\]"
    ):
        dm.encoded_split("train")


def test_missing_text_column_and_empty_split(tmp_path):
    with pytest.raises(InputError, match="no text column 'sentence'"):
        sequence_module(tmp_path, "text\tlabel\ngood\t1\n", text_column="sentence").raw_split("train")
    with pytest.raises(InputError, match="split 'train' .* is empty"):
        sequence_module(tmp_path, "text\tlabel\n").raw_split("train")


def test_truncation_is_counted_and_tokenization_cached(tmp_path, caplog):
    dm = sequence_module(
        tmp_path, "text\tlabel\n" + "the movie was good . " * 20 + "\t1\nbad\t0\n", max_length=16
    )
    before = dm.split_fingerprint("train")
    encoded = dm.encoded_split("train")
    # tokenizing leaves truncation state in the backend; the cache key must not see it (DDP ranks
    # that did and did not tokenize must agree on the key)
    assert dm.split_fingerprint("train") == before
    assert [len(ids) for ids in encoded["input_ids"]] == [16, 3]
    assert "1 of 2 examples truncated at max_length=16" in caplog.text
    cached = list((tmp_path / "c" / "encoded").glob("train-*.arrow"))
    assert len(cached) == 1
    # same data and settings -> same cache file; another max_length -> another file
    sequence_module(
        tmp_path, "text\tlabel\n" + "the movie was good . " * 20 + "\t1\nbad\t0\n", max_length=16
    ).encoded_split("train")
    sequence_module(
        tmp_path, "text\tlabel\n" + "the movie was good . " * 20 + "\t1\nbad\t0\n", max_length=32
    ).encoded_split("train")
    assert len(list((tmp_path / "c" / "encoded").glob("train-*.arrow"))) == 2


def test_token_module_keeps_word_ids_and_pads_batches(tmp_path):
    files = {"train": write(tmp_path / "train.txt", CONLL)}
    dm = TokenClassificationDataModule(
        data_files=files, tokenizer="demo", tag_column=3, cache_dir=str(tmp_path / "c"), batch_size=3
    )
    assert dm.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    batch = next(iter(dm.loader("fit")))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["word_ids"].shape
    for row in range(3):
        words = batch["word_ids"][row]
        labelled = batch["labels"][row] != -100
        first = [w for i, w in enumerate(words.tolist()) if w >= 0 and (i == 0 or words[i - 1] != w)]
        assert labelled.sum() == len(first)  # one label per word
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == -100).all()


def padded_tokens(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def test_length_grouped_sampler_is_a_new_permutation_each_epoch_with_little_padding():
    rng = random.Random(0)
    lengths = [min(3 + int(rng.expovariate(1 / 12)), 128) for _ in range(3000)]  # short texts, long tail
    sampler = LengthGroupedSampler(lengths, 32, torch.Generator().manual_seed(0))
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(3000)) and first != second
    assert max(lengths[i] for i in first[:32]) == max(lengths)  # longest batch first
    shuffled = torch.randperm(3000, generator=torch.Generator().manual_seed(0)).tolist()
    # fully sorted rows pad least (about sum(lengths)); grouping is close to that, a shuffle far from it
    assert padded_tokens(first, lengths, 32) < 1.1 * padded_tokens(
        sorted(first, key=lengths.__getitem__), lengths, 32
    )
    assert padded_tokens(shuffled, lengths, 32) > 1.8 * padded_tokens(first, lengths, 32)


def test_length_grouped_loader_resumes_mid_epoch_with_the_same_batches():
    lengths = [1 + i * 7 % 50 for i in range(500)]

    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(
            list(range(500)),
            batch_size=8,
            sampler=LengthGroupedSampler(lengths, 8, torch.Generator().manual_seed(1)),
        )

    whole = loader()
    epochs = [[b.tolist() for b in whole] for _ in range(3)]
    stopped = loader()
    list(stopped)  # epoch 0, so the generator has moved on: a fresh loader's order would differ
    batches = iter(stopped)
    seen = [next(batches).tolist() for _ in range(37)]  # mid epoch 1
    resumed = loader()
    resumed.load_state_dict(stopped.state_dict())
    assert seen + [b.tolist() for b in resumed] == epochs[1]
    assert [b.tolist() for b in resumed] == epochs[2]  # and the next epoch's order matches too


def test_length_grouped_sampler_shards_one_order_over_ranks_and_each_rank_resumes():
    rng = random.Random(1)
    lengths = [min(3 + int(rng.expovariate(1 / 12)), 128) for _ in range(1001)]

    def loader(rank: int) -> StatefulDataLoader:  # what each DDP rank builds (Lightning does not wrap it)
        sampler = LengthGroupedSampler(
            lengths, 8, torch.Generator().manual_seed(3), num_replicas=2, rank=rank
        )
        assert isinstance(sampler, torch.utils.data.DistributedSampler) and len(sampler) == 501
        return StatefulDataLoader(list(range(1001)), batch_size=8, sampler=sampler)

    for epoch in range(2):  # both ranks cut the same epoch's order: together every row, once (+1 pad)
        ranks = [loader(0), loader(1)]
        for dl in ranks:
            for _ in range(epoch):
                list(dl)
        shards = [[i for b in dl for i in b.tolist()] for dl in ranks]
        assert set(shards[0] + shards[1]) == set(range(1001)) and len(shards[0] + shards[1]) == 1002
        assert shards[0] != shards[1] and max(lengths[i] for i in shards[0][:8]) == max(lengths)
        assert padded_tokens(shards[0], lengths, 8) < 1.2 * padded_tokens(
            sorted(shards[0], key=lengths.__getitem__), lengths, 8
        )
    # a rank stopped mid-way through its second epoch resumes with the batches it had not seen
    whole = loader(1)
    epochs = [[b.tolist() for b in whole] for _ in range(2)]
    stopped = loader(1)
    list(stopped)
    batches = iter(stopped)
    seen = [next(batches).tolist() for _ in range(20)]
    resumed = loader(1)
    resumed.load_state_dict(stopped.state_dict())
    assert seen + [b.tolist() for b in resumed] == epochs[1]


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_evaluation_runs_longest_first_and_scores_as_in_file_order(tmp_path, task):
    from lightning_modules import FineTuneModule
    from tests.test_distill import TINY, trainer

    cls = SequenceClassificationDataModule if task == "sequence" else TokenClassificationDataModule
    dm = cls(tokenizer="demo", cache_dir=str(tmp_path), batch_size=16)
    dm.setup("fit")
    by_length, in_file_order = list(dm.val_dataloader()), list(dm.loader("validate"))
    widths = [b["input_ids"].shape[1] for b in by_length]
    assert widths == sorted(widths, reverse=True)  # longest first
    assert sorted(torch.cat([b["idx"] for b in by_length]).tolist()) == list(range(400))
    real = sum(int(b["attention_mask"].sum()) for b in in_file_order)
    # demo validation (400 rows, batch 16): 1.4x (sequence) and 1.8x (token) the real tokens in file
    # order, 1.02-1.03x longest first
    assert sum(b["input_ids"].numel() for b in by_length) < 1.05 * real
    assert sum(b["input_ids"].numel() for b in in_file_order) > 1.3 * real
    dm.trainer = trainer(limit_val_batches=3)  # a part of the split: its first rows, not its longest
    assert torch.cat([b["idx"] for b in dm.val_dataloader()]).tolist() == list(range(400))
    dm.trainer = None

    torch.manual_seed(0)
    module = FineTuneModule(model_config=TINY, task=task, label_names=dm.label_names)
    scores = trainer(limit_val_batches=None).validate(module, datamodule=dm, verbose=False)[0]
    in_order = trainer(limit_val_batches=None).validate(
        module, dataloaders=dm.loader("validate"), verbose=False
    )[0]
    assert scores.keys() == in_order.keys() and "val/loss" in scores
    for key, value in scores.items():  # the same predictions; the loss up to float summation order
        assert value == pytest.approx(in_order[key], abs=1e-6 if key == "val/loss" else 0), key
