"""``mj-include``: MJML, HTML and CSS files pulled into a template, from the template folder only.

Semantics follow reference MJML 5 (``mjml-parser-xml``): a path is relative to the file that
contains the ``mj-include``; ``type="html"`` becomes an ``mj-raw`` in place; ``type="css"``
becomes an ``mj-style`` at the end of ``mj-head`` (``css-inline="inline"`` adds
``inline="inline"``); any other type is MJML: a file without ``<mjml>`` is a list of body
elements put in place, a whole document gives its body's children in place and its head's
children to the including document's head. Includes inside raw content (``mj-text`` …) are text.

mjml-python resolves nested includes against the first file, not the including one, so the
expansion happens here, before mjml-python sees the document.

What may be read: regular files whose real path (symbolic links followed) lies inside the template
folder. A path that is absolute, contains NUL, a drive letter or a UNC prefix, escapes the
folder with ``..`` or through a symbolic link, names a directory, or includes itself
(directly or not) raises :class:`IncludeProblem`. Reference MJML would leave an
``<!-- mj-include denied -->`` comment and go on; we refuse, because a missing part of an
edition is worse than no edition.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from worker.editions.mjml_tree import JINJA_VALUE, Element, parse

MAX_DEPTH = 16
"""Includes nested deeper than this are refused (a chain this long is a mistake)."""


@dataclass
class IncludeProblem(ValueError):
    """An ``mj-include`` that cannot be honoured. ``file``/``line`` say where it is written
    (``file`` relative to the template folder), ``path`` is its ``path`` attribute as written."""

    file: str
    line: int
    path: str
    reason: str

    # The same shape as an MjmlProblem, so callers list both alike.
    element = "mj-include"
    attribute = "path"
    allowed = "a relative path to a file inside the template folder"
    included_at: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        return f'{self.file}:{self.line} (mj-include) — path="{self.path}": {self.reason}'


def _fully_decoded(path: str) -> str:
    # Reference MJML decodes %-escapes up to ten times, so "%252e%252e" cannot hide "..".
    for _ in range(10):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return path


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def resolve(path: str, including: Path, root: Path, line: int = 0) -> Path:
    """The real path of the file that ``<mj-include path=…>`` in ``including`` names.

    ``root`` is the template folder (a real path); ``line`` is where the include is written,
    for the error. Returns a regular file inside ``root``; raises :class:`IncludeProblem`.
    """
    shown = _shown(including, root)
    decoded = _fully_decoded(path)
    if not decoded.strip():
        raise IncludeProblem(shown, line, path, "no path given")
    if (
        "\0" in decoded
        or os.path.isabs(decoded)
        or re.match(r"^[a-zA-Z]:", decoded)
        or decoded.startswith(("\\", "//"))
    ):
        raise IncludeProblem(
            shown, line, path, "refused: only relative paths inside the template folder"
        )
    target = (including.parent / decoded).resolve()
    if target == root or root not in target.parents:
        raise IncludeProblem(shown, line, path, "refused: outside the template folder")
    if not target.exists():
        raise IncludeProblem(
            shown,
            line,
            path,
            f"mj-include fails to read file: {_shown(target, root)} does not exist",
        )
    if not target.is_file():
        raise IncludeProblem(shown, line, path, "not a regular file")
    return target


def _read(target: Path, root: Path, line: int, including: Path, path: str) -> str:
    try:
        return target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = f"cannot read {_shown(target, root)}: {type(error).__name__}"
        raise IncludeProblem(_shown(including, root), line, path, reason) from error


@dataclass(frozen=True)
class _Chain:
    """The includes being expanded, outermost first: (real path, line) pairs."""

    files: tuple[Path, ...]
    at: tuple[tuple[str, int], ...]


def _includes(element: Element) -> list[Element]:
    found = []
    for child in element.children:
        if child.tag == "mj-include":
            found.append(child)
        else:
            found.extend(_includes(child))
    return found


def _check_chain(target: Path, chain: _Chain, include: Element, root: Path, file: Path) -> None:
    path = include.attributes.get("path", "")
    if target in chain.files or target == file:
        raise IncludeProblem(_shown(file, root), include.line, path, "circular inclusion")
    if len(chain.files) >= MAX_DEPTH:
        raise IncludeProblem(
            _shown(file, root), include.line, path, f"more than {MAX_DEPTH} nested includes"
        )


def _wrapped(content: str) -> str:
    # mjml-parser-xml: content.indexOf('<mjml>') === -1 -> a list of body elements
    return content if "<mjml>" in content else f"<mjml><mj-body>{content}</mj-body></mjml>"


def _inner(text: str, element: Element | None) -> str:
    if element is None or element.close_start <= element.open_end:
        return ""
    return text[element.open_end : element.close_start]


def expand(text: str, file: Path, root: Path, chain: _Chain | None = None) -> str:
    """``text`` (an MJML document written in ``file``) with every ``mj-include`` replaced by
    what it names, recursively, resolved against ``root`` (the template folder). Text outside
    the includes is kept byte for byte. Raises :class:`IncludeProblem`."""
    if "<mj-include" not in text:
        return text  # the common case: no second parse of the document
    root, file = root.resolve(), file.resolve()
    chain = chain or _Chain((), ())
    tree = parse(text, _shown(file, root))
    pieces: list[str] = []
    head_extra: list[str] = []
    css_extra: list[str] = []
    position = 0
    for include in _includes(tree):
        pieces.append(text[position : include.start])
        position = include.close_end
        pieces.append(_replacement(include, file, root, chain, head_extra, css_extra))
    pieces.append(text[position:])
    return _with_head("".join(pieces), "".join(head_extra) + "".join(css_extra))


def _replacement(
    include: Element,
    file: Path,
    root: Path,
    chain: _Chain,
    head_extra: list[str],
    css_extra: list[str],
) -> str:
    path = include.attributes.get("path", "")
    kind = include.attributes.get("type", "mjml")
    target = resolve(path, file, root, include.line)
    content = _read(target, root, include.line, file, path)
    if kind == "html":
        return f"<mj-raw>{content}</mj-raw>"
    if kind == "css":
        inline = ' inline="inline"' if include.attributes.get("css-inline") == "inline" else ""
        css_extra.append(f"<mj-style{inline}>{content}</mj-style>")
        return ""
    _check_chain(target, chain, include, root, file)
    inner_chain = _Chain((*chain.files, file), (*chain.at, (_shown(file, root), include.line)))
    document = expand(_wrapped(content), target, root, inner_chain)
    parsed = parse(document, _shown(target, root))
    mjml = parsed.find("mjml")
    if mjml is None:
        return ""
    head_extra.append(_inner(document, mjml.find("mj-head")))
    return _inner(document, mjml.find("mj-body"))


def _with_head(text: str, extra: str) -> str:
    if not extra:
        return text
    mjml = parse(text, "").find("mjml")
    if mjml is None:
        return text
    head = mjml.find("mj-head")
    if head is not None and head.close_start > head.open_end:
        return text[: head.close_start] + extra + text[head.close_start :]
    if head is not None:  # <mj-head /> : replace it by a full head
        return text[: head.start] + f"<mj-head>{extra}</mj-head>" + text[head.close_end :]
    return text[: mjml.open_end] + f"<mj-head>{extra}</mj-head>" + text[mjml.open_end :]


def graft(
    tree: Element, file: Path, root: Path, chain: _Chain | None = None
) -> list[IncludeProblem]:
    """Replace the ``mj-include`` elements of ``tree`` (parsed from ``file``) by the elements
    they name, keeping each element's own file and line and its include chain, for validation.

    Returns the includes that could not be honoured (they are dropped from the tree); never
    raises. Includes whose path is computed by Jinja (marked by :data:`JINJA_VALUE`) are dropped
    unchecked: the rendered document is checked instead.
    """
    includes = _includes(tree)
    if not includes:
        return []
    root, file = root.resolve(), file.resolve()
    chain = chain or _Chain((), ())
    problems: list[IncludeProblem] = []
    for include in includes:
        parent = include.parent or tree
        index = parent.children.index(include)
        parent.children[index : index + 1] = _grafted(include, file, root, chain, tree, problems)
    return problems


def _grafted(
    include: Element,
    file: Path,
    root: Path,
    chain: _Chain,
    tree: Element,
    problems: list[IncludeProblem],
) -> list[Element]:
    path = include.attributes.get("path", "")
    if JINJA_VALUE in path:
        return []
    kind = include.attributes.get("type", "mjml")
    try:
        target = resolve(path, file, root, include.line)
        content = _read(target, root, include.line, file, path)
        if kind == "css" and include.attributes.get("css-inline") == "inline":
            # Reference MJML inlines it into the elements; mjml-python would leave a <style>.
            reason = 'css-inline="inline" is not inlined by mjml-python; include without it'
            raise IncludeProblem(_shown(file, root), include.line, path, reason)
        if kind in ("html", "css"):
            return []  # raw content: nothing to validate
        _check_chain(target, chain, include, root, file)
    except IncludeProblem as problem:
        problems.append(problem)
        return []
    at = (*include.included_at, (_shown(file, root), include.line))
    inner_chain = _Chain((*chain.files, file), at)
    included = parse(_wrapped(content), _shown(target, root))
    _mark(included, at)
    problems.extend(graft(included, target, root, inner_chain))
    mjml = included.find("mjml")
    if mjml is None:
        return []
    head = mjml.find("mj-head")
    if head is not None:
        _add_to_head(tree, head.children)
    body = mjml.find("mj-body")
    return list(body.children) if body is not None else []


def _mark(element: Element, at: tuple[tuple[str, int], ...]) -> None:
    element.included_at = at
    for child in element.children:
        _mark(child, at)


def _add_to_head(tree: Element, children: list[Element]) -> None:
    mjml = tree.find("mjml")
    if mjml is None:
        return
    head = mjml.find("mj-head")
    if head is None:  # reference MJML adds a head to take them
        head = Element("mj-head", {}, mjml.line, mjml.file, parent=mjml)
        mjml.children.insert(0, head)
    head.children.extend(children)


def mask_jinja(source: str) -> str:
    """``source`` (a Jinja2 MJML template) with Jinja syntax blanked out, line breaks kept, so
    that it parses as MJML with the template's own line numbers: ``{{ … }}`` becomes
    :data:`JINJA_VALUE` (a value known only after rendering), ``{% … %}`` and ``{# … #}`` spaces."""

    def blank(match: re.Match[str]) -> str:
        text = match.group(0)
        keep = "".join("\n" if char == "\n" else "" for char in text)
        return (JINJA_VALUE if text.startswith("{{") else " ") + keep

    return re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", blank, source, flags=re.S)


_INCLUDE_PATH = re.compile(r"""(<mj-include\b[^>]*?\bpath\s*=\s*)(["'])(.*?)\2""", re.S)


def rebase_paths(source: str, folder: str) -> str:
    """``source`` with each relative ``mj-include`` path prefixed by ``folder/`` (the template's
    folder relative to the template root), so the rendered document, which no longer knows
    which template each line came from, resolves includes as the writing template did.

    Absolute and empty paths are left as written: :func:`resolve` refuses them by name.
    """
    if not folder:
        return source

    def rebase(match: re.Match[str]) -> str:
        path = match.group(3)
        if not path or path.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", path):
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{folder}/{path}{match.group(2)}"

    return _INCLUDE_PATH.sub(rebase, source)
