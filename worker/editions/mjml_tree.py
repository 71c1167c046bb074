"""The element tree of one MJML file: tags, attributes, lines and where each sits in the text.

MJML is not XML: the content of "ending tags" (``mj-text``, ``mj-button``, ``mj-raw`` …) is raw
HTML that reference MJML (``mjml-parser-xml``) does not parse as elements. The scanner does the
same: inside an ending tag it only counts nested tags of the same name to find the matching close.
Both the validator (:mod:`worker.editions.mjml_rules`) and the include expander
(:mod:`worker.editions.includes`) read this tree, so they agree on what an element is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

RULES_FILE = Path(__file__).with_name("mjml_rules.json")
"""Reference MJML's component table, dumped by ``tests/fidelity/rules.js`` (npm mjml, pinned)."""
JINJA_VALUE = "\ue000"
"""Marks an attribute value computed by Jinja (see :func:`worker.editions.includes.mask_jinja`):
its type cannot be checked before rendering, so it is checked in the rendered MJML instead."""


@cache
def rules() -> dict[str, Any]:
    """The parsed :data:`RULES_FILE`: ``{"mjml": version, "components": {tag: {"attributes":
    {name: type}, "children": [tag | {"regex": source}], "ending": bool}}, "colors": [name]}``."""
    loaded: dict[str, Any] = json.loads(RULES_FILE.read_text(encoding="utf-8"))
    return loaded


@cache
def ending_tags() -> frozenset[str]:
    """Tags whose content is raw HTML, not MJML elements."""
    return frozenset(tag for tag, spec in rules()["components"].items() if spec["ending"])


@dataclass
class Element:
    """One MJML element as written in one file.

    ``line`` is 1-based in ``file``; ``start``/``open_end`` are offsets of its start tag in the
    file's text, ``close_start``/``close_end`` those of its end tag (equal to ``open_end`` for a
    self-closing or unclosed tag). ``included_at`` lists (file, line) of the ``mj-include`` chain
    that brought the element in, outermost first.
    """

    tag: str
    attributes: dict[str, str]
    line: int
    file: str
    start: int = 0
    open_end: int = 0
    close_start: int = 0
    close_end: int = 0
    children: list[Element] = field(default_factory=list)
    parent: Element | None = field(default=None, repr=False)
    included_at: tuple[tuple[str, int], ...] = ()

    def find(self, tag: str) -> Element | None:
        """The first direct child named ``tag``."""
        return next((child for child in self.children if child.tag == tag), None)


class _Scanner(HTMLParser):
    def __init__(self, text: str, file: str) -> None:
        super().__init__(convert_charrefs=True)
        self._file = file
        self._text = text
        self._line_offsets = [0, *(match.end() for match in re.finditer("\n", text))]
        self.root = Element("#document", {}, 0, file)
        self._current = self.root
        self._ending = ending_tags()
        self._raw_depth = 0  # > 0 while inside the content of an ending tag

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_offsets[line - 1] + column

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], closed: bool) -> None:
        if self._raw_depth:
            if tag == self._current.tag and not closed:
                self._raw_depth += 1
            return
        start = self._offset()
        end = start + len(self.get_starttag_text() or "")
        element = Element(
            tag,
            {name: value or "" for name, value in attrs},
            self.getpos()[0],
            self._file,
            start,
            end,
            end,
            end,
            parent=self._current,
        )
        self._current.children.append(element)
        if not closed:
            self._current = element
            if tag in self._ending:
                self._raw_depth = 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, closed=True)

    def handle_endtag(self, tag: str) -> None:
        if self._raw_depth:
            if tag != self._current.tag:
                return
            self._raw_depth -= 1
            if self._raw_depth:
                return
        # Close up to the matching open element; a stray end tag closes nothing.
        element: Element | None = self._current
        while element is not None and element.tag != tag:
            element = element.parent
        if element is None or element is self.root:
            return
        start = self._offset()
        element.close_start = start
        end = self._text.find(">", start)
        element.close_end = end + 1 if end >= 0 else len(self._text)
        self._current = element.parent or self.root


def parse(text: str, file: str) -> Element:
    """The element tree of ``text`` (an MJML file named ``file`` in messages) under a
    ``#document`` root. Never raises: unclosed tags end at the end of the text."""
    scanner = _Scanner(text, file)
    scanner.feed(text)
    scanner.close()
    return scanner.root
