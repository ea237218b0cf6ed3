"""What a manifest's label column holds: its task kind, its classes, and each cell's value.

The kind of a target column is inferred from its known cells (``--kind NAME=KIND`` sets it):

- **binary**: every value is a yes/no word or number (``1/0``, ``true/false``,
  ``positive/negative``, ``pos/neg``, ``yes/no``, any case), or there are exactly two distinct
  values (``ductal``/``lobular``, grade ``1``/``2``: the later in natural order is positive);
- **multiclass**: a few categories (at most :data:`MAX_CLASSES`): words (PAM50 ``LumA``,
  ``Basal``...), scores such as HER2 ``0``, ``1+``, ``2+``, ``3+``, or a few whole numbers
  (grade ``1``, ``2``, ``3``);
- **regression**: numbers that are not a few whole numbers (Ki-67 or TIL percentages).

Classes are kept in natural order: by their leading number first (``0 < 1+ < 2+ < 3+``, ``2 <
10``), then alphabetically, so ordinal scores keep their order. Numbers are compared as numbers
(``1`` and ``1.0`` are one class). A column that mixes yes/no words with other words is binary
with unparseable cells, reported with their row, as before kinds existed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pathology.table import number

KIND_NAMES = ("binary", "multiclass", "regression", "survival")
MAX_CLASSES = 10                      # more distinct values than this are not inferred as categories
POSITIVE = {"1", "1.0", "true", "positive", "pos", "yes"}
NEGATIVE = {"0", "0.0", "false", "negative", "neg", "no"}
UNKNOWN = {"", "na", "n/a", "nan", "none", "null", "unknown"}
YES_NO_WORDS = (POSITIVE | NEGATIVE) - {"1", "1.0", "0", "0.0"}
_POSITIVE_KEYS = {"1", "true", "positive", "pos", "yes"}
_NEGATIVE_KEYS = {"0", "false", "negative", "neg", "no"}
_LEADING_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+))(.*)$", re.S)


@dataclass(frozen=True)
class LabelSpec:
    """How a column's cells become values: ``kind`` and ``classes`` (multiclass: every class in
    order; binary: () for yes/no values, else (negative, positive))."""

    kind: str
    classes: tuple[str, ...] = ()


def is_unknown(raw: str) -> bool:
    return raw.strip().lower() in UNKNOWN


def class_key(text: str) -> str:
    """The identity of a class value: a number's value (``1.0`` = ``1``), else its lowercase text."""
    value = number(text.strip())
    return f"{value:g}" if value is not None else text.strip().lower()


def natural_key(name: str) -> tuple:
    """Order of classes: leading number first (``1+`` < ``2+`` < ``10``), then the text."""
    match = _LEADING_NUMBER.match(name)
    if match:
        return (0, float(match[1]), match[2].strip().lower())
    return (1, 0.0, name.strip().lower())


def distinct_values(cells: Iterable[str]) -> dict[str, str]:
    """class key -> first spelling seen, over the known cells."""
    out: dict[str, str] = {}
    for raw in cells:
        if not is_unknown(raw):
            out.setdefault(class_key(raw), raw.strip())
    return out


def ordered_classes(values: dict[str, str]) -> tuple[str, ...]:
    """The display names of ``values`` (key -> spelling) in natural order; numbers as ``1``, not ``1.0``."""
    names = [key if number(key) is not None else spelling for key, spelling in values.items()]
    return tuple(sorted(names, key=natural_key))


def _yes_no(values: dict[str, str]) -> bool:
    """Whether the column is written in yes/no values: all of them are; or some are yes/no
    words; or some are 0/1 and the others words that are not scores (``1`` and ``maybe``: a
    typo, not a class), whereas ``0``, ``1+``, ``2+`` are scores."""
    keys = set(values)
    vocab = _POSITIVE_KEYS | _NEGATIVE_KEYS
    if keys <= vocab or keys & YES_NO_WORDS:
        return True
    return bool(keys & vocab) and any(not _LEADING_NUMBER.match(k) for k in keys - vocab)


def infer(cells: Sequence[str]) -> LabelSpec | str:
    """The spec of a label column from its cells, or a sentence saying why there is none."""
    values = distinct_values(cells)
    if _yes_no(values):
        return LabelSpec("binary")
    numbers = [number(k) for k in values]
    if len(values) == 2:
        return LabelSpec("binary", ordered_classes(values))
    if all(n is not None for n in numbers):
        if len(values) <= MAX_CLASSES and all(float(n).is_integer() for n in numbers):
            return LabelSpec("multiclass", ordered_classes(values))
        return LabelSpec("regression")
    if len(values) <= MAX_CLASSES:
        return LabelSpec("multiclass", ordered_classes(values))
    return (f"{len(values)} distinct values, not all numbers: too many for classes (at most {MAX_CLASSES} are "
            "inferred); set its kind with --kind NAME=multiclass or NAME=regression")


def explicit(kind: str, cells: Sequence[str]) -> LabelSpec | str:
    """The spec of a column whose kind was given, or a sentence saying why it cannot hold it."""
    values = distinct_values(cells)
    if kind == "binary":
        if _yes_no(values):
            return LabelSpec("binary")
        if len(values) == 2:
            return LabelSpec("binary", ordered_classes(values))
        return f"a binary task needs two classes, the column has {len(values)}: {_list(ordered_classes(values))}"
    if kind == "multiclass":
        if len(values) < 2:
            return f"a multi-class task needs at least two classes, the column has {len(values)}"
        return LabelSpec("multiclass", ordered_classes(values))
    return LabelSpec(kind)


def parse(spec: LabelSpec, raw: str) -> float | None:
    """A cell's value under ``spec``: binary 1/0, a class index, a number; NaN when unknown;
    None when the cell does not fit."""
    if is_unknown(raw):
        return math.nan
    text = raw.strip()
    if spec.kind == "regression":
        return number(text)
    if spec.classes:
        keys = [class_key(c) for c in spec.classes]
        key = class_key(text)
        return float(keys.index(key)) if key in keys else None
    if spec.kind == "binary":
        key = class_key(text)
        return 1.0 if key in _POSITIVE_KEYS else 0.0 if key in _NEGATIVE_KEYS else None
    return None


def expected(spec: LabelSpec) -> str:
    """What a cell of ``spec`` may hold, for messages."""
    if spec.kind == "regression":
        return "a number; empty = unknown"
    if spec.classes:
        return f"one of {_list(spec.classes)}; empty = unknown"
    return "use 1/0, true/false, positive/negative, pos/neg, yes/no; empty = unknown"


def _list(classes: Sequence[str]) -> str:
    return ", ".join(map(repr, classes[:12])) + (", ..." if len(classes) > 12 else "")
