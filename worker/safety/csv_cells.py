"""CSV cells that a spreadsheet opens as text, never as a formula (CSV injection).

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is taken for a
formula by Excel, LibreOffice and Google Sheets (``=HYPERLINK(…)`` sends data away,
``=cmd|…`` runs a program). An address may legally start with ``=``, ``+`` or ``-`` (RFC 5322
§3.2.3 atext), so such cells are written with a leading ``'``, as OWASP's "CSV Injection" advises;
a cell that starts with ``'`` gets one more, so that ``read_cell`` undoes exactly what
``write_cell`` did and an export imports back unchanged.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


def write_cell(value: str) -> str:
    """``value`` as it is written to a CSV: ``'`` prepended when it could start a formula."""
    if value.startswith((*FORMULA_STARTS, ESCAPE)):
        return ESCAPE + value
    return value


def read_cell(value: str) -> str:
    """The value ``write_cell`` was given: one leading ``'`` removed before a formula start or
    another ``'``; any other cell as it is."""
    if value.startswith(ESCAPE) and value[1:].startswith((*FORMULA_STARTS, ESCAPE)):
        return value[1:]
    return value


__all__ = ["FORMULA_STARTS", "read_cell", "write_cell"]
