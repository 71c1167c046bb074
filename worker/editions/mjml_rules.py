"""MJML validation: the rules reference MJML applies with ``validationLevel: "strict"``.

mjml-python (MRML) validates nothing: an unknown element, an illegal attribute or a unitless
width renders silently and differently from reference MJML (handed case m03). This module applies
reference MJML's own rules (``mjml-validator`` 5.x: validAttributes, validChildren, validTag,
validTypes, errorAttr) to an :class:`~worker.editions.mjml_tree.Element` tree, using the
component table dumped from the pinned npm package (``mjml_rules.json``), and adds the two
constructs mjml-python renders differently (``mj-html-attributes``, ``mj-style inline``).

Each :class:`MjmlProblem` names the file, line, element, attribute and what is allowed; the
message text is reference MJML's, so an editor can look it up in MJML's documentation.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from worker.editions.mjml_tree import JINJA_VALUE, Element, rules

# Reference MJML: tags with no component that are valid anyway (rules/validTag.js), attributes
# every element accepts (rules/validAttributes.js), elements the validator skips (index.js).
_COMPONENTLESS = frozenset({"mj-all", "mj-class", "mj-selector", "mj-html-attribute"})
_ALWAYS_ALLOWED = ("mj-class", "css-class")
_SKIPPED = frozenset({"mjml", "#document"})


@dataclass(frozen=True)
class MjmlProblem:
    """One thing reference MJML's strict validation (or mjml-python) refuses.

    ``file`` is the template file as named to the editor, ``line`` 1-based in it, ``element`` the
    tag (``mj-image``), ``attribute`` the attribute at fault or ``None``, ``message`` reference
    MJML's wording, ``allowed`` what would be accepted instead, ``included_at`` the
    ``(file, line)`` chain of ``mj-include`` that brought the element in.
    """

    file: str
    line: int
    element: str
    attribute: str | None
    message: str
    allowed: str = ""
    included_at: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        if self.included_at:
            where += ", included at " + ", itself included at ".join(
                f"{file}:{line}" for file, line in reversed(self.included_at)
            )
        allowed = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{where} ({self.element}) — {self.message}{allowed}"


def _problem(
    element: Element, message: str, attribute: str | None = None, allowed: str = ""
) -> MjmlProblem:
    return MjmlProblem(
        element.file, element.line, element.tag, attribute, message, allowed, element.included_at
    )


# --- attribute types (mjml-core/lib/types/*.js) -------------------------------------------------


@dataclass(frozen=True)
class _Type:
    """One attribute type of reference MJML: its matchers and its error message."""

    patterns: tuple[re.Pattern[str], ...]
    message: str  # "$value" is replaced by the value
    allowed: str
    exact: frozenset[str] = frozenset()

    def accepts(self, value: str) -> bool:
        return value in self.exact or any(p.search(value) for p in self.patterns)


def _unit_type(spec: str) -> _Type:
    # unit.js: units in (…), number of values in {…} (default 1); "auto" allowed when listed.
    negative = "-|" if spec.startswith("unitWithNegative") else ""
    units = re.search(r"\(([^)]+)\)", spec)
    unit_list = units.group(1).split(",") if units else []
    counts = re.search(r"\{([^}]+)\}", spec)
    count_list = counts.group(1).split(",") if counts else ["1"]
    auto = "|auto" if "auto" in unit_list else ""
    plain = "|".join(re.escape(unit) for unit in unit_list if unit != "auto")
    pattern = rf"^((({negative}\d|,|\.){{1,}}({plain})|0{auto})( )?){{{','.join(count_list)}}}$"
    return _Type(
        (re.compile(pattern),),
        f"has invalid value: $value for type Unit, only accepts ({', '.join(unit_list)}) units "
        f"and {' to '.join(count_list)} value(s)",
        f"{' to '.join(count_list)} value(s) in {', '.join(unit_list)}, e.g. "
        f"{'10' + unit_list[0] if unit_list and unit_list[0] != 'auto' else '0'}",
    )


def _enum_type(spec: str) -> _Type:
    found = re.search(r"\(([^)]+)\)", spec)
    values = found.group(1).split(",") if found else []
    return _Type(
        (),
        f"has invalid value: $value for type Enum, only accepts {', '.join(values)}",
        ", ".join(values),
        frozenset(values),
    )


def _color_type() -> _Type:
    names = "|".join(re.escape(name) for name in rules()["colors"])
    return _Type(
        (
            re.compile(r"rgba\(\d{1,3},\s?\d{1,3},\s?\d{1,3},\s?\d(\.\d{1,3})?\)", re.I),
            re.compile(r"rgb\(\d{1,3},\s?\d{1,3},\s?\d{1,3}\)", re.I),
            re.compile(r"^#([0-9a-f]{3}){1,2}$", re.I),
            re.compile(rf"^({names})$"),
        ),
        "has invalid value: $value for type Color ",
        "#rgb, #rrggbb, rgb(…), rgba(…) or a CSS colour name",
    )


@cache
def attribute_type(spec: str) -> _Type:
    """The checker for a type spec of the rules table (``unit(px,%){1,4}``, ``enum(a,b)``,
    ``color``, ``boolean``, ``integer``, ``string``). Raises ``ValueError`` for another spec."""
    if spec.startswith(("unit(", "unitWithNegative(")):
        return _unit_type(spec)
    if spec.startswith("enum"):
        return _enum_type(spec)
    if spec.startswith("color"):
        return _color_type()
    if spec.startswith("boolean"):
        # parser converts exactly "true"/"false" to booleans; boolean.js accepts only those
        return _Type(
            (),
            "has invalid value: $value for type Boolean ",
            "true, false",
            frozenset({"true", "false"}),
        )
    if spec.startswith("integer"):
        return _Type(
            (re.compile(r"\d+"),), "has invalid value: $value for type NInteger ", "a whole number"
        )
    if spec.startswith("string"):
        return _Type((re.compile(r".*"),), "", "")
    raise ValueError(f"no MJML type for {spec!r}")


# --- the rules ----------------------------------------------------------------------------------


def _components() -> dict[str, dict[str, object]]:
    components: dict[str, dict[str, object]] = rules()["components"]
    return components


def _accepts_child(parent: str, child: str) -> bool:
    spec = _components().get(parent, {}).get("children", [])
    assert isinstance(spec, list)
    for dependency in spec:
        if isinstance(dependency, dict):
            if re.search(dependency["regex"], child):
                return True
        elif dependency == child:
            return True
    return False


def _attributes_of(tag: str) -> dict[str, str]:
    attributes = _components()[tag]["attributes"]
    assert isinstance(attributes, dict)
    return attributes


def _check_attributes(element: Element) -> Iterator[MjmlProblem]:
    allowed = _attributes_of(element.tag)
    for name in element.attributes:
        if name not in allowed and name not in _ALWAYS_ALLOWED:
            names = ", ".join([*sorted(allowed), *_ALWAYS_ALLOWED])
            yield _problem(element, f"Attribute {name} is illegal", name, names)


def _check_children(element: Element) -> Iterator[MjmlProblem]:
    for child in element.children:
        if child.tag not in _components() or _accepts_child(element.tag, child.tag):
            continue
        parents = [tag for tag in _components() if _accepts_child(tag, child.tag)]
        yield _problem(
            child,
            f"{child.tag} cannot be used inside {element.tag}, only inside: {', '.join(parents)}",
            allowed=f"inside {element.tag}: {', '.join(_allowed_children(element.tag))}",
        )


def _allowed_children(tag: str) -> list[str]:
    return [child for child in _components() if _accepts_child(tag, child)]


def _check_tag(element: Element) -> Iterator[MjmlProblem]:
    if element.tag in _COMPONENTLESS or element.tag in _components():
        return
    close = difflib.get_close_matches(element.tag, list(_components()), n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else "a tag of MJML"
    yield _problem(element, f"Element {element.tag} doesn't exist or is not registered", None, hint)


def _check_types(element: Element) -> Iterator[MjmlProblem]:
    allowed = _attributes_of(element.tag)
    for name, value in element.attributes.items():
        if name not in allowed or JINJA_VALUE in value:
            continue
        checker = attribute_type(allowed[name])
        if not checker.accepts(value):
            message = f"Attribute {name} {checker.message.replace('$value', value)}"
            yield _problem(element, message, name, checker.allowed)


def _check_mjml_python(element: Element) -> Iterator[MjmlProblem]:
    # Not errors in reference MJML, but mjml-python renders them differently (LIBRARY-NOTES.md).
    if element.tag == "mj-html-attributes":
        yield _problem(element, "mj-html-attributes is not supported by mjml-python", None, "")
    if element.tag == "mj-style" and element.attributes.get("inline") == "inline":
        yield _problem(
            element,
            'mj-style inline="inline" is not inlined by mjml-python',
            "inline",
            "inline styles on the elements, or a plain mj-style",
        )


def validate(tree: Element) -> list[MjmlProblem]:
    """Every problem in ``tree`` (a parsed file, includes grafted in), in document order, as
    reference MJML's strict validation would list them plus mjml-python's gaps. Never raises."""
    problems: list[MjmlProblem] = []
    _walk(tree, problems)
    return problems


def _walk(element: Element, problems: list[MjmlProblem]) -> None:
    if (
        element.parent is not None
        and element.parent.tag == "#document"
        and not element.tag.startswith("mj")
    ):
        # HTML at the top of a Jinja child template fills a block inside an ending tag of the
        # layout (a footer link in mj-text): raw content, as in that tag.
        return
    if element.tag not in _SKIPPED:
        if element.tag in _components():
            problems.extend(_check_attributes(element))
            problems.extend(_check_children(element))
            problems.extend(_check_types(element))
        else:
            problems.extend(_check_tag(element))
        problems.extend(_check_mjml_python(element))
    for child in element.children:
        _walk(child, problems)
