import torch

from datamodules.token import align_labels, word_start_mask

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC"]


def test_first_subtoken_gets_the_word_label_rest_ignored():
    # [CLS] Blackburn(Black ##burn) visited New York(York) [SEP]; words 0..3
    word_ids = [None, 0, 0, 1, 2, 3, 3, 3, None]
    word_labels = [1, 0, 3, 4]
    assert align_labels(word_ids, word_labels, NAMES) == [-100, 1, -100, 0, 3, 4, -100, -100, -100]


def test_label_all_tokens_turns_b_into_i_on_continuations():
    word_ids = [None, 0, 0, 1, 2, 3, 3, 3, None]
    word_labels = [1, 0, 3, 4]
    assert align_labels(word_ids, word_labels, NAMES, label_all_tokens=True) == [
        -100,
        1,
        2,
        0,
        3,
        4,
        4,
        4,
        -100,
    ]


def test_label_all_tokens_keeps_b_when_no_i_label_exists():
    # B-MISC has no I-MISC in this label list, so continuations keep B-MISC rather than crash
    assert align_labels([None, 0, 0, None], [5], NAMES, label_all_tokens=True) == [-100, 5, 5, -100]


def test_word_start_mask_marks_first_subtoken_of_each_word():
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2, -1, -1], [-1, 0, 1, 1, 1, -1, -1, -1]])
    expected = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(word_start_mask(word_ids), expected)
