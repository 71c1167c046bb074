"""JSON documents from the open internet, read with a bound on their nesting.

``json.loads`` recurses once per ``[`` or ``{``: a body of 100 000 opening brackets raises
``RecursionError`` (an answer 500, before any signature is checked), and a document just under
the interpreter's limit makes every later recursive walk (validation, re-serialisation) fail the
same way. No document we accept (a signup event, a provider's webhook) nests deeper than a
dozen levels, so anything deeper than :data:`MAX_DEPTH` is refused before it is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32

# A JSON string (RFC 8259 §7), possessive so that a long string costs one pass, not backtracking.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class TooDeep(ValueError):
    """A JSON document nested deeper than allowed; a ``ValueError`` like any other bad JSON."""


def nesting_depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """The deepest array/object nesting of the JSON text ``raw`` (brackets inside strings do not
    count), stopping at ``limit + 1``: the text need not be valid JSON."""
    level = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if match.group() in (b"[", b"{"):
            level += 1
            deepest = max(deepest, level)
            if deepest > limit:
                break
        else:
            level = max(0, level - 1)
    return deepest


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw`` (RFC 8259). Raises :class:`TooDeep` when it nests deeper than
    ``max_depth`` levels, ``ValueError`` (``json.JSONDecodeError``, ``UnicodeDecodeError``) when
    it is not JSON."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if nesting_depth(data, max_depth) > max_depth:
        raise TooDeep(f"nested deeper than {max_depth} levels")
    return json.loads(raw)
