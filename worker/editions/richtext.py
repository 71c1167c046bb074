"""Editorial Markdown turned into safe e-mail HTML and into plain text.

Markdown is parsed once with markdown-it-py (CommonMark, raw HTML off, so an editor's ``<`` is
text); the HTML is then cleaned by nh3 (ammonia) to an allow-list: no script, no event handlers,
no ``style``/``class`` from the source, links only to http, https and mailto. Our own inline
styles are added after cleaning because many mail clients drop ``<style>`` blocks.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

# fmt: off
ALLOWED_TAGS = frozenset({
    "p", "br", "hr", "h3", "h4", "blockquote", "ul", "ol", "li",
    "a", "em", "strong", "code", "pre", "img",
})
# fmt: on
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"}}
URL_SCHEMES = frozenset({"http", "https", "mailto"})

# Inline styles: Gmail's app and Outlook.com ignore some <style> rules; inline always applies.
_INLINE_STYLES = {
    "p": {"style": "margin:0 0 16px 0;"},
    "a": {"style": "color:#1a5c96;text-decoration:underline;"},
    "h3": {"style": "margin:24px 0 8px 0;font-size:18px;line-height:1.3;"},
    "h4": {"style": "margin:20px 0 8px 0;font-size:16px;line-height:1.3;"},
    "blockquote": {"style": "margin:0 0 16px 0;padding:0 0 0 16px;border-left:3px solid #d0cdc4;"},
    "ul": {"style": "margin:0 0 16px 0;padding:0 0 0 24px;"},
    "ol": {"style": "margin:0 0 16px 0;padding:0 0 0 24px;"},
    "img": {"style": "max-width:100%;height:auto;"},
    "hr": {"style": "border:0;border-top:1px solid #d0cdc4;margin:24px 0;"},
}

TEXT_WIDTH = 72  # plain-text lines well under RFC 5322's 78-character recommendation


@cache
def _parser() -> MarkdownIt:
    # "commonmark" with html=False: raw HTML in the source is shown as text, never passed on.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def _demote_headings(tokens: Sequence[Token]) -> None:
    # Item titles are the mail's headings; body headings sit below them (h3/h4 only).
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = "h3" if token.tag in ("h1", "h2", "h3") else "h4"


def markdown_to_html(source: str) -> str:
    """Safe HTML for the Markdown ``source``, for inside an ``mj-text``.

    Output uses only :data:`ALLOWED_TAGS`; links keep ``href`` (http, https, mailto only), get
    ``rel="noopener noreferrer"`` and an inline style. Pure function, no I/O.
    """
    parser = _parser()
    tokens = parser.parse(source)
    _demote_headings(tokens)
    return clean_html(parser.renderer.render(tokens, parser.options, {}))


def clean_html(html: str) -> str:
    """``html`` reduced to :data:`ALLOWED_TAGS` and :data:`ALLOWED_ATTRIBUTES` by nh3, with our
    inline styles added. The second line of defence: markdown-it already escapes raw HTML."""
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        clean_content_tags={"script", "style"},
        set_tag_attribute_values=_INLINE_STYLES,
        strip_comments=True,
    ).strip()


@dataclass
class _TextState:
    blocks: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # "> " for quotes, list markers
    counters: list[int | None] = field(default_factory=list)  # None = bullet list
    items: list[int] = field(default_factory=list)  # items seen so far in each open list
    pending_marker: str | None = None
    heading: str | None = None  # tag of the heading being read
    tight: bool = False  # the paragraph being read belongs to a tight list (no blank lines)
    continues_list: bool = False  # ... and is not the list's first item


def markdown_to_text(source: str, width: int = TEXT_WIDTH) -> str:
    """Plain text for the Markdown ``source``: paragraphs wrapped at ``width`` characters,
    headings underlined, lists with ``-``/``1.``, quotes with ``>``, links as ``text (URL)``.

    Blocks are separated by one blank line; the result has no trailing newline.
    """
    state = _TextState()
    for token in _parser().parse(source):
        _text_token(token, state, width)
    return "\n\n".join(block.rstrip() for block in state.blocks if block.strip())


def _text_token(token: Token, state: _TextState, width: int) -> None:
    kind = token.type
    if kind == "blockquote_open":
        state.prefixes.append("> ")
    elif kind in ("blockquote_close", "bullet_list_close", "ordered_list_close"):
        state.prefixes.pop()
        if kind != "blockquote_close":
            state.counters.pop()
            state.items.pop()
    elif kind in ("bullet_list_open", "ordered_list_open"):
        ordered = kind == "ordered_list_open"
        state.counters.append(int(token.attrGet("start") or 1) if ordered else None)
        state.prefixes.append("   " if ordered else "  ")
        state.items.append(0)
    elif kind == "list_item_open":
        state.pending_marker = _next_marker(state)
        state.items[-1] += 1
        state.continues_list = state.items[-1] > 1
    elif kind == "paragraph_open":
        state.tight = token.hidden  # markdown-it hides paragraphs of tight lists
    elif kind == "inline" and state.heading:
        text = _inline_text(token.children or [])
        state.blocks.append(heading(text, "=" if state.heading == "h1" else "-", width))
    elif kind == "inline":
        _text_inline(token, state, width)
    elif kind == "heading_open":
        state.heading = token.tag
    elif kind == "heading_close":
        state.heading = None
    elif kind in ("fence", "code_block"):
        state.blocks.append(textwrap.indent(token.content.rstrip("\n"), "    "))
    elif kind == "hr":
        state.blocks.append("-" * 8)


def _next_marker(state: _TextState) -> str:
    counter = state.counters[-1]
    if counter is None:
        return "- "
    state.counters[-1] = counter + 1
    return f"{counter}. "


def _text_inline(token: Token, state: _TextState, width: int) -> None:
    text = _inline_text(token.children or [])
    indent = "".join(state.prefixes[:-1]) if state.prefixes else ""
    marker = state.pending_marker
    state.pending_marker = None
    own = state.prefixes[-1] if state.prefixes else ""
    first = indent + (marker if marker is not None else own)
    rest = indent + (" " * len(marker) if marker is not None else own)
    lines = []
    for number, line in enumerate(text.split("\n")):
        lines.append(
            textwrap.fill(
                line,
                width=width,
                initial_indent=first if number == 0 else rest,
                subsequent_indent=rest,
                break_long_words=False,  # never split a URL
                break_on_hyphens=False,
            )
        )
    block = "\n".join(lines)
    if state.tight and state.continues_list and state.blocks:
        state.blocks[-1] += "\n" + block  # items of a tight list stay on consecutive lines
    else:
        state.blocks.append(block)
    state.continues_list = False


def _inline_text(children: Sequence[Token]) -> str:
    out: list[str] = []
    hrefs: list[tuple[str, int]] = []
    for child in children:
        kind = child.type
        if kind in ("text", "code_inline"):
            out.append(child.content)
        elif kind == "softbreak":
            out.append(" ")
        elif kind == "hardbreak":
            out.append("\n")
        elif kind == "image":
            out.append(child.content or "")
        elif kind == "link_open":
            hrefs.append((str(child.attrGet("href") or ""), len(out)))
        elif kind == "link_close" and hrefs:
            href, start = hrefs.pop()
            label = "".join(out[start:]).strip()
            if href and label != href and not href.startswith("mailto:"):
                out.append(f" ({href})")
            elif href.startswith("mailto:") and label != href[7:]:
                out.append(f" ({href[7:]})")
    return "".join(out)


def wrap(text: str, width: int = TEXT_WIDTH) -> str:
    """``text`` as paragraphs wrapped at ``width`` characters; existing line breaks are kept,
    words and URLs are never split."""
    return "\n".join(
        textwrap.fill(line, width=width, break_long_words=False, break_on_hyphens=False)
        if line.strip()
        else ""
        for line in str(text).splitlines()
    )


def heading(text: str, rule: str = "=", width: int = TEXT_WIDTH) -> str:
    """``text`` wrapped at ``width`` and underlined with ``rule`` as long as its longest line
    (the setext heading style readers of plain-text mail know)."""
    wrapped = wrap(" ".join(str(text).split()), width)
    return f"{wrapped}\n{rule * max(len(line) for line in wrapped.splitlines())}"


def tidy_text(text: str) -> str:
    """Strip trailing spaces (except the "-- " signature separator of RFC 3676 section 4.3),
    collapse runs of blank lines into one, end with exactly one newline."""
    lines = [line if line == "-- " else line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"
