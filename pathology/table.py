"""Reading the CSV tables users write (manifests, slide lists): one reader for every command.

Comma, semicolon (what a European Excel writes) or tab separated, detected from the header;
a UTF-8 byte-order mark is dropped; every cell is a stripped string and every row keeps its
line number, so a problem names the file, the row and the column.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

DELIMITERS = ",;\t"

Loc = tuple[str, int]  # (file name, CSV line; the header is line 1)


class TableError(InputError):
    """A table that cannot be read at all (missing, a spreadsheet, not UTF-8): one line naming the file."""


def where(loc: Loc, column: str | None = None) -> str:
    """``"file.csv row 3, column 'er'"``."""
    return f"{loc[0]} row {loc[1]}" + (f", column {column!r}" if column else "")


@dataclass
class Table:
    """A CSV read as strings (cells stripped), with the line number of each row."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]

    def loc(self, i: int) -> Loc:
        return self.path.name, self.lines[i]

    def require(self, columns: Sequence[str], problems: list[str], elsewhere: Sequence[str] = ()) -> None:
        """Report each of ``columns`` that neither this table nor ``elsewhere`` has."""
        for c in columns:
            if c not in self.columns and c not in elsewhere:
                near = [h for h in self.columns if h.lower() == c.lower()]
                hint = f" (did you mean {near[0]!r}?)" if near else f" (has: {', '.join(self.columns)})"
                problems.append(f"{self.path.name} row 1 (header): missing required column {c!r}{hint}")


def read_table(path: str | Path, problems: list[str]) -> Table:
    """Read a CSV as strings; raises :class:`TableError` when the file cannot be read at all.

    Blank lines are skipped; rows with more cells than the header, duplicate and unnamed
    header columns are reported in ``problems``. Excel files are refused with a message to
    export them as CSV (reading .xlsx would need openpyxl, not a dependency).
    """
    path = Path(path)
    if path.suffix.lower() in (".xlsx", ".xls", ".ods"):
        raise TableError(f"{path.name}: spreadsheets are not read; save the sheet as CSV "
                         f"(File > Save as > CSV UTF-8) and pass the .csv")
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TableError(f"{path.name}: not UTF-8 text; save it as CSV UTF-8") from None
    name = path.name
    delimiter = max(DELIMITERS, key=text.split("\n", 1)[0].count)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    if not header:
        problems.append(f"{name}: empty file (no header row)")
    problems += [f"{name} row 1 (header): duplicate column {h!r}"
                 for h, k in Counter(h for h in header if h).items() if k > 1]
    columns = [h for h in dict.fromkeys(header) if h]  # unnamed columns (a saved index) are ignored
    rows, lines, previous = [], [], reader.line_num
    for cells in reader:
        line, previous = previous + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            problems.append(f"{name} row {line}: {len(cells)} cells but the header has {len(header)} columns")
        row: dict[str, str] = {}
        for h, c in zip(header, cells):
            row.setdefault(h, c.strip())
        rows.append({c: row.get(c, "") for c in columns})
        lines.append(line)
    return Table(path, columns, rows, lines)


def number(text: str) -> float | None:
    """A cell as a finite float, or None (empty, text, nan, inf)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
