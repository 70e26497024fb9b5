"""Embedded offline demo data: a seeded generator for a sentiment set, a sentence-pair set
(is a claim about the review's subject?), a pair regression set (how much two reviews like the
film, 0..5) and an NER set, and a WordPiece tokenizer trained on the generated text. Nothing is downloaded.

The sentiment set is built so that bag-of-words is not enough: negation flips the polarity of
the adjective it governs ("not good"), and in mixed clauses the clause after "but" /
"although ..., " decides the label. 3% label noise keeps a perfect score out of reach.
The NER set uses varied templates and names that are ambiguous without context ("Jordan" is a
person or a place, "Chelsea" a person or an organisation), in strict IOB2.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

SPLIT_SIZES = {"train": 2000, "validation": 400, "test": 400}
SEQUENCE_LABELS = ["negative", "positive"]
PAIR_LABELS = ["other_subject", "same_subject"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

# --- sentiment -------------------------------------------------------------------------------
_SUBJECTS = [
    "the movie",
    "this film",
    "the acting",
    "the plot",
    "the soundtrack",
    "the script",
    "the ending",
    "the cast",
    "the dialogue",
    "the director 's work",
    "the story",
    "the cinematography",
    "this sequel",
    "the performance",
    "the pacing",
]
_POSITIVE = [
    "good",
    "great",
    "wonderful",
    "charming",
    "moving",
    "brilliant",
    "funny",
    "clever",
    "beautiful",
    "gripping",
    "delightful",
    "sharp",
    "warm",
    "fresh",
    "memorable",
]
_NEGATIVE = [
    "bad",
    "dull",
    "boring",
    "awful",
    "clumsy",
    "tedious",
    "flat",
    "stupid",
    "messy",
    "lifeless",
    "predictable",
    "weak",
    "shallow",
    "painful",
    "forgettable",
]
_INTENSIFIERS = ["very", "really", "extremely", "quite", "truly", "so", "rather", "incredibly"]
_NEGATIONS = ["not", "never", "hardly", "not at all"]
_VERBS = ["is", "was", "felt", "seems", "looked"]
_FILLERS = ["", "", "honestly ,", "in the end ,", "overall ,", "to be fair ,", "for me ,"]


def _clause(rng: random.Random) -> tuple[str, int]:
    """One clause and its polarity: 1 positive, 0 negative."""
    positive = rng.random() < 0.5
    adjective = rng.choice(_POSITIVE if positive else _NEGATIVE)
    if rng.random() < 0.4:
        adjective = f"{rng.choice(_INTENSIFIERS)} {adjective}"
    negated = rng.random() < 0.3
    verb = rng.choice(_VERBS)
    words = [rng.choice(_SUBJECTS), verb] + ([rng.choice(_NEGATIONS)] if negated else []) + [adjective]
    return " ".join(words), int(positive != negated)


def _sentiment_example(rng: random.Random) -> dict:
    first, label = _clause(rng)
    shape = rng.random()
    if shape < 0.45:
        text = f"{rng.choice(_FILLERS)} {first} ."
    elif shape < 0.75:  # the clause after "but" decides
        second, label = _clause(rng)
        text = f"{first} , but {second} ."
    elif shape < 0.9:  # "although A , B": B decides
        second, label = _clause(rng)
        text = f"although {first} , {second} ."
    else:  # two agreeing clauses joined by "and"
        second, second_label = _clause(rng)
        while second_label != label:
            second, second_label = _clause(rng)
        text = f"{first} and {second} ."
    if rng.random() < 0.03:
        label = 1 - label
    return {"text": " ".join(text.split()), "label": SEQUENCE_LABELS[label]}


def _pair_example(rng: random.Random) -> dict:
    """Premise: a one-clause review; hypothesis: a clause that is about the same subject or not (half
    each). The model has to match words across the two texts: neither text alone decides."""
    review, _ = _clause(rng)
    subject = _subject(review)
    same = rng.random() < 0.5
    hypothesis, _ = _clause(rng)
    while (_subject(hypothesis) == subject) != same:
        hypothesis, _ = _clause(rng)
    return {"text": f"{review} .", "text_pair": f"{hypothesis} .", "label": PAIR_LABELS[int(same)]}


def _subject(clause: str) -> str:
    return next(s for s in sorted(_SUBJECTS, key=len, reverse=True) if clause.startswith(s))


def _rating_example(rng: random.Random) -> dict:
    """Two one-clause reviews and how much they like the film together, 0..5 (a regression over a
    pair, like STS-B's scores): 2.5 points per positive review, plus a little noise. (A score for
    "same subject" was tried: 2-layer models trained from scratch for the demo's 6 epochs did not
    learn it by regression, Pearson < 0.2, while they learn this one to > 0.95.)"""
    first, second = _clause(rng), _clause(rng)
    score = 2.5 * first[1] + 2.5 * second[1] + rng.uniform(-0.25, 0.25)
    return {
        "text": f"{first[0]} .",
        "text_pair": f"{second[0]} .",
        "label": round(min(5.0, max(0.0, score)), 3),
    }


# --- NER -------------------------------------------------------------------------------------
_FIRST = [
    "John",
    "Maria",
    "Ahmed",
    "Yuki",
    "Peter",
    "Sofia",
    "Chen",
    "Olga",
    "David",
    "Fatima",
    "Lucas",
    "Anna",
    "Ivan",
    "Grace",
    "Carlos",
    "Jordan",
    "Chelsea",
    "Paris",
]
_LAST = [
    "Smith",
    "Garcia",
    "Khan",
    "Tanaka",
    "Blackburn",
    "Rossi",
    "Wei",
    "Petrova",
    "Miller",
    "Haddad",
    "Martin",
    "Novak",
    "Okafor",
    "Lopez",
    "Jordan",
    "Washington",
]
_ORGS = [
    ["Reuters"],
    ["United", "Nations"],
    ["Acme", "Corp"],
    ["European", "Commission"],
    ["Chelsea"],
    ["Bank", "of", "England"],
    ["Siemens"],
    ["World", "Health", "Organization"],
    ["Red", "Cross"],
    ["Toyota", "Motor"],
    ["Ajax"],
    ["Deutsche", "Bank"],
    ["NATO"],
]
_PLACES = [
    ["London"],
    ["Paris"],
    ["New", "York"],
    ["Jordan"],
    ["Tokyo"],
    ["Brussels"],
    ["Lagos"],
    ["Sao", "Paulo"],
    ["Berlin"],
    ["Washington"],
    ["Cairo"],
    ["Buenos", "Aires"],
    ["Oslo"],
]
_MISC = [
    ["German"],
    ["British"],
    ["Olympic", "Games"],
    ["World", "Cup"],
    ["Japanese"],
    ["French"],
    ["Nobel", "Prize"],
    ["Brazilian"],
    ["Euro", "2024"],
    ["Christmas"],
]
# Names seen only in validation/test, so the held-out score measures use of context and
# capitalisation, not memorised names.
_UNSEEN = {
    "first": ["Noor", "Kwame", "Ingrid", "Mateo", "Priya"],
    "last": ["Lindqvist", "Mensah", "Duarte", "Iyer", "Kowalski"],
    "ORG": [["Vantor", "Holdings"], ["Baltic", "Shipping", "Group"], ["Unilab"], ["Northwind", "Bank"]],
    "LOC": [["Valparaiso"], ["Tbilisi"], ["Port", "Moresby"], ["Kigali"]],
    "MISC": [["Estonian"], ["Paralympic", "Games"], ["Chilean"]],
}
_NER_TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{ORG} said on Monday that {PER} will visit {LOC} .",
    "{PER} , a {MISC} citizen , was born in {LOC} .",
    "Shares in {ORG} rose 3 percent after {PER} spoke in {LOC} .",
    "{LOC} will host the {MISC} next year , officials said .",
    "{PER} met {PER} at the {MISC} in {LOC} .",
    "The {MISC} team beat {ORG} 2 - 1 in {LOC} on Sunday .",
    "In {LOC} , {PER} told {ORG} that talks had failed .",
    "{ORG} and {ORG} signed a deal worth 5 million dollars .",
    "Police in {LOC} arrested a {MISC} man on Tuesday .",
    "{PER} scored twice for {ORG} .",
    "Prices fell in {LOC} and {LOC} , said {PER} of {ORG} .",
]


def _entity(rng: random.Random, kind: str, unseen: bool) -> list[str]:
    if kind == "PER":
        first = rng.choice(_UNSEEN["first"] if unseen else _FIRST)
        return [first] + ([rng.choice(_UNSEEN["last"] if unseen else _LAST)] if rng.random() < 0.7 else [])
    return rng.choice(_UNSEEN[kind] if unseen else {"ORG": _ORGS, "LOC": _PLACES, "MISC": _MISC}[kind])


def _ner_example(rng: random.Random, held_out: bool) -> dict:
    tokens: list[str] = []
    tags: list[str] = []
    for piece in rng.choice(_NER_TEMPLATES).split():
        if piece.startswith("{") and piece.endswith("}"):
            kind = piece[1:-1]
            words = _entity(rng, kind, unseen=held_out and rng.random() < 0.3)
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            tokens.append(piece)
            tags.append("O")
    return {"tokens": tokens, "tags": tags}


def demo_split(task: str, split: str, seed: int = 1234) -> list[dict]:
    """The rows of one demo split: ``{"text", "label"}`` (sequence), ``{"text", "text_pair", "label"}``
    (pairs: same subject or not; rating: a 0..5 score) or ``{"tokens", "tags"}`` (token)."""
    if task not in ("sequence", "pairs", "rating", "token"):
        raise ValueError(f"demo task must be 'sequence', 'pairs', 'rating' or 'token', got {task!r}")
    if split not in SPLIT_SIZES:
        raise ValueError(f"demo split must be one of {sorted(SPLIT_SIZES)}, got {split!r}")
    offset = list(SPLIT_SIZES).index(split)
    rng = random.Random(f"{seed}-{task}-{offset}")
    if task == "sequence":
        return [_sentiment_example(rng) for _ in range(SPLIT_SIZES[split])]
    if task == "pairs":  # words of the sentiment set only: the demo tokenizer covers them
        return [_pair_example(rng) for _ in range(SPLIT_SIZES[split])]
    if task == "rating":  # regression: a score 0..5 per pair of clauses
        return [_rating_example(rng) for _ in range(SPLIT_SIZES[split])]
    return [_ner_example(rng, held_out=split != "train") for _ in range(SPLIT_SIZES[split])]


def demo_texts(splits: tuple[str, ...] = ("train",), seed: int = 1234) -> list[str]:
    """The demo sentences of both tasks in ``splits``, as plain text."""
    texts = [row["text"] for split in splits for row in demo_split("sequence", split, seed)]
    return texts + [" ".join(row["tokens"]) for split in splits for row in demo_split("token", split, seed)]


def train_wordpiece(
    texts: list[str],
    folder: str | Path,
    vocab_size: int,
    lowercase: bool = False,
    special_tokens: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    min_frequency: int = 2,
) -> None:
    """Build a BERT-style WordPiece tokenizer from ``texts`` and save it as a transformers folder.

    The vocabulary is every character (word-initial and ``##`` continuation) plus the words seen at
    least ``min_frequency`` times, most frequent first. Rarer words split into pieces, as names unseen
    in training do. Counting instead of ``tokenizers``' WordPiece trainer keeps it deterministic: that
    trainer breaks ties in hash order, so its vocabulary changes from run to run."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word for text in texts for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted({c for word in counts for c in word})
    words = sorted(
        (w for w, n in counts.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-counts[w], w)
    )
    vocab = list(dict.fromkeys([*special_tokens, *chars, *(f"##{c}" for c in chars), *words]))[:vocab_size]
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = (
        normalizer,
        splitter,
        decoders.WordPiece(),
    )
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", vocab.index("[SEP]")), ("[CLS]", vocab.index("[CLS]"))
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],  # BERT's: pairs get types 0 / 1
    ).save_pretrained(folder)


def demo_tokenizer(cache_dir: str | Path, vocab_size: int = 1000, seed: int = 1234):
    """A cased WordPiece tokenizer built from the demo training text of both tasks, saved under
    ``cache_dir`` and loaded from there on later calls (same text -> same vocabulary)."""
    from transformers import PreTrainedTokenizerFast

    texts = demo_texts(seed=seed)
    key = hashlib.sha256(json.dumps([texts, vocab_size, "token types"]).encode()).hexdigest()[:12]
    folder = Path(cache_dir).expanduser() / f"demo-tokenizer-{key}"
    if not (folder / "tokenizer.json").exists():
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        train_wordpiece(texts, tmp, vocab_size)
        try:
            tmp.rename(folder)  # atomic: a concurrent or killed build never leaves half a folder
        except OSError:  # another process (e.g. a DDP rank) finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(folder)
