"""Readers for local data files. Each returns a list of row dicts and raises ``InputError`` with
the file (and line, where there is one) on malformed input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from datamodules.errors import InputError


def _require_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"data file {str(path)!r} does not exist: fix the path in data.data_files")
    return path


def _utf8(read):
    """A reader whose file is not UTF-8 gets one line naming the file."""

    def wrapped(path, *args, **kwargs):
        try:
            return read(path, *args, **kwargs)
        except UnicodeDecodeError as e:
            raise InputError(
                f"{path} is not UTF-8 text (byte {e.start}: {e.reason}): convert it, e.g. iconv -t utf-8"
            ) from None

    return wrapped


@_utf8
def read_table(path: str | Path) -> list[dict]:
    """Rows of a ``.tsv``, ``.csv`` or ``.jsonl``/``.json`` (one object per line) file.
    TSV is read without quote handling (SST-2 sentences contain bare quotes); cells are stripped."""
    path = _require_file(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(
                            f"{path}:{number}: not a JSON object ({e.msg}); write one JSON object per line"
                        ) from None
        return rows
    if suffix not in (".tsv", ".csv"):
        raise InputError(f"{path}: unknown file type {suffix!r}; use .tsv, .csv, .jsonl or CoNLL .txt/.conll")
    with path.open(encoding="utf-8", newline="") as f:
        if suffix == ".tsv":
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(f)
        rows = []
        for row in reader:
            if None in row or None in row.values():
                raise InputError(
                    f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} columns "
                    f"{reader.fieldnames}; fix the row or the delimiter"
                )
            rows.append({k.strip(): v.strip() for k, v in row.items()})
        return rows


@_utf8
def read_conll(path: str | Path, tag_column: int = -1) -> list[dict]:
    """Sentences of a CoNLL column file as ``{"tokens", "tags"}``: whitespace-separated columns,
    token first, tags in ``tag_column`` (e.g. -1 = last, 3 = NER in CoNLL-2003), a blank line
    between sentences, ``-DOCSTART-`` lines skipped. Every line must have the same column count."""
    path = _require_file(path)
    sentences, tokens, tags = [], [], []
    n_columns = None
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            columns = line.split()
            if not columns:
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags})
                    tokens, tags = [], []
                continue
            if columns[0] == "-DOCSTART-":
                continue
            if n_columns is None:
                n_columns = len(columns)
                if not -n_columns <= tag_column < n_columns or tag_column in (0, -n_columns):
                    raise InputError(
                        f"{path}:{number}: data.tag_column={tag_column} is not a tag column "
                        f"of a {n_columns}-column file; choose 1..{n_columns - 1} or -1"
                    )
            elif len(columns) != n_columns:
                raise InputError(
                    f"{path}:{number}: expected {n_columns} columns like the first line, "
                    f"found {len(columns)}; fix the line (tokens cannot contain spaces)"
                )
            tokens.append(columns[0])
            tags.append(columns[tag_column])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    return sentences
