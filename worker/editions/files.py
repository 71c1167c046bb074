"""Edition sources: the folder an editor writes by hand, read and checked.

An edition folder holds ``newsletter.yaml`` (the newsletter profile: names, sender, languages) and
one ``<language>.yaml`` per language of the newsletter (subject, preheader, period, items with
Markdown bodies); ``examples/editions/2024-W28/`` is the model and ``docs/editions.md`` the
reference. :func:`check_edition` reports every problem at once, each with its file, field path and
line; :func:`read_edition` returns typed values or raises :class:`EditionInvalid` with that list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from email_validator import EmailNotValidError, validate_email

PROFILE_FILE = "newsletter.yaml"

# An edition key ends up in archive URLs and database keys: keep it to URL-safe characters.
EDITION_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A language tag as used for folder names, catalogues and the HTML lang attribute (BCP 47 subset).
LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


@dataclass(frozen=True)
class NewsletterProfile:
    """The newsletter itself, from ``newsletter.yaml``: the text around every edition.

    Every per-language mapping (``name``, ``from_name``, ``about``) has an entry for each language
    in ``languages``; ``default_language`` is one of them and is where readers whose language the
    newsletter does not offer end up.
    """

    name: Mapping[str, str]
    from_address: str
    from_name: Mapping[str, str]
    reply_to: str | None
    site: str
    languages: tuple[str, ...]
    default_language: str
    about: Mapping[str, str]


@dataclass(frozen=True)
class EditionImage:
    """A picture above an item: its URL, alternative text (required) and optional credit line."""

    url: str
    alt: str
    credit: str | None = None


@dataclass(frozen=True)
class EditionItem:
    """One article of an edition; ``lead`` is plain text, ``body`` is Markdown."""

    section: str | None
    title: str
    standfirst: str | None
    url: str
    image: EditionImage | None
    lead: str
    body: str


@dataclass(frozen=True)
class EditionContent:
    """One language of one edition, from ``<language>.yaml`` (e.g. ``en.yaml``)."""

    key: str
    language: str
    period_start: date
    period_end: date
    subject: str
    preheader: str
    items: tuple[EditionItem, ...]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-safe dict (dates as ISO 8601 strings); :meth:`from_json` reverses it."""
        return {
            "key": self.key,
            "language": self.language,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "subject": self.subject,
            "preheader": self.preheader,
            "items": [_item_to_json(item) for item in self.items],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EditionContent:
        """Rebuild the content stored by :meth:`to_json`.

        Raises ``KeyError``/``ValueError`` when ``data`` is not such a dict.
        """
        return cls(
            key=str(data["key"]),
            language=str(data["language"]),
            period_start=date.fromisoformat(data["period_start"]),
            period_end=date.fromisoformat(data["period_end"]),
            subject=str(data["subject"]),
            preheader=str(data["preheader"]),
            items=tuple(_item_from_json(item) for item in data["items"]),
        )


def _item_to_json(item: EditionItem) -> dict[str, Any]:
    image = item.image
    return {
        "section": item.section,
        "title": item.title,
        "standfirst": item.standfirst,
        "url": item.url,
        "image": None
        if image is None
        else {"url": image.url, "alt": image.alt, "credit": image.credit},
        "lead": item.lead,
        "body": item.body,
    }


def _item_from_json(data: Mapping[str, Any]) -> EditionItem:
    image = data.get("image")
    return EditionItem(
        section=data.get("section"),
        title=data["title"],
        standfirst=data.get("standfirst"),
        url=data["url"],
        image=None
        if image is None
        else EditionImage(url=image["url"], alt=image["alt"], credit=image.get("credit")),
        lead=data["lead"],
        body=data["body"],
    )


@dataclass(frozen=True)
class EditionSource:
    """A whole edition folder: the newsletter profile and the content per language."""

    newsletter: NewsletterProfile
    contents: Mapping[str, EditionContent]

    @property
    def key(self) -> str:
        """The edition key shared by every language (e.g. ``2024-W28``)."""
        return next(iter(self.contents.values())).key


@dataclass(frozen=True)
class EditionProblem:
    """One reason an edition cannot be sent.

    ``file`` is the file name inside the edition folder, ``location`` the field path
    (``items[0].image.alt``) or, when there is none, ``line 12``; ``line`` is the 1-based line the
    problem was found at, when known.
    """

    file: str
    location: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.location and self.location != f"line {self.line}":
            where = f"{where}: {self.location}"
        return f"{where}: {self.reason}"


class EditionInvalid(ValueError):
    """An edition folder with problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[EditionProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


# --- YAML with line numbers -------------------------------------------------------------------


@dataclass
class _Located:
    """A YAML document as plain values plus the line of every field path."""

    value: Any
    lines: dict[str, int] = field(default_factory=dict)
    duplicates: list[tuple[str, int]] = field(default_factory=list)

    def line(self, path: str) -> int | None:
        """Line of ``path`` or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = _parent(path)
        return self.lines.get("")


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves timestamps as text: PyYAML raises a bare ValueError on
    ``2024-07-32``, and the checker wants to report it with its field instead."""


_Loader.add_constructor(
    "tag:yaml.org,2002:timestamp",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


def _load_located(text: str) -> _Located:
    """Parse one YAML document with PyYAML's safe constructor, remembering node lines.

    Raises ``yaml.YAMLError`` (with ``problem_mark``) on syntax errors.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return _Located(None, {"": 1})
        located = _Located(loader.construct_document(node))
        _record_lines(node, "", located)
        return located
    finally:
        loader.dispose()


def _record_lines(node: yaml.Node, path: str, located: _Located) -> None:
    located.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                # PyYAML keeps the last duplicate silently; an editor almost never means that.
                located.duplicates.append((child, key_node.start_mark.line + 1))
            seen.add(key)
            located.lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, located)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, f"{path}[{index}]", located)


# --- checking -----------------------------------------------------------------------------------


class _Checker:
    """Collects the problems of one file. Each reading method (``mapping``, ``text``, ``url``,
    ``day``, ``per_language``) returns the value when it is valid and None otherwise, after
    recording why; missing optional values are None without a problem."""

    def __init__(self, file: str, located: _Located) -> None:
        self.file = file
        self.located = located
        self.problems: list[EditionProblem] = []
        for path, line in located.duplicates:
            self.problem(path, "key appears twice (the last one would win)", line)

    def problem(self, path: str, reason: str, line: int | None = None) -> None:
        if line is None:
            line = self.located.line(path)
        location = path or (f"line {line}" if line is not None else "")
        self.problems.append(EditionProblem(self.file, location, reason, line))

    def mapping(
        self,
        value: Any,
        path: str,
        required: tuple[str, ...],
        optional: tuple[str, ...] = (),
    ) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping of keys, got {_kind(value)}")
            return None
        for key in required:
            if value.get(key) is None:  # absent, or present with no value (`subject:`)
                child = f"{path}.{key}" if path else key
                self.problem(child, f"missing field '{key}'", self.located.line(path))
        known = set(required) | set(optional)
        for key in value:
            if key not in known:
                child = f"{path}.{key}" if path else str(key)
                self.problem(child, f"unknown key '{key}' (expected one of: {_listing(known)})")
        return value

    def text(self, mapping: Mapping[str, Any], key: str, path: str) -> str | None:
        value = mapping.get(key)
        where = f"{path}.{key}" if path else key
        if value is None:
            return None  # reported as missing by mapping(), or optional
        if not isinstance(value, str):
            self.problem(where, f"expected text, got {_kind(value)}")
            return None
        if not value.strip():
            self.problem(where, "is empty")
            return None
        return value

    def url(self, mapping: Mapping[str, Any], key: str, path: str) -> str | None:
        value = self.text(mapping, key, path)
        if value is None:
            return None
        reason = _url_problem(value)
        if reason:
            self.problem(f"{path}.{key}" if path else key, reason)
            return None
        return value

    def day(self, mapping: Mapping[str, Any], key: str, path: str) -> date | None:
        value = mapping.get(key)
        where = f"{path}.{key}"
        if value is None:
            return None
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        self.problem(where, f"expected a date like 2024-07-08, got {value!r}")
        return None

    def per_language(
        self, mapping: Mapping[str, Any], key: str, path: str, languages: tuple[str, ...]
    ) -> dict[str, str] | None:
        where = f"{path}.{key}" if path else key
        value = mapping.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(where, f"expected one text per language, got {_kind(value)}")
            return None
        result: dict[str, str] = {}
        for language in languages:
            if language not in value:
                self.problem(where, f"missing language '{language}'")
            else:
                text = self.text(value, language, where)
                if text is not None:
                    result[language] = text.strip()
        for language in value:
            if language not in languages:
                self.problem(
                    f"{where}.{language}",
                    f"language '{language}' is not in 'languages' ({_listing(languages)})",
                )
        return result


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _listing(names: Any) -> str:
    return ", ".join(sorted(str(name) for name in names))


def _url_problem(value: str) -> str | None:
    """Why ``value`` is not an absolute http(s) URL a mail client can open, or None."""
    if value != value.strip() or any(ch.isspace() for ch in value):
        return f"bad URL {value!r}: contains whitespace"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as error:
        return f"bad URL {value!r}: {error}"
    if parts.scheme not in ("http", "https"):
        return f"bad URL {value!r}: must start with https:// (or http://)"
    if not parts.hostname or "." not in parts.hostname:
        return f"bad URL {value!r}: no host name"
    return None


def _address_problem(value: str) -> str | None:
    """Why ``value`` is not a valid address (RFC 5321/5322 syntax, via email-validator), or None.

    No DNS lookup: checking must work offline and give the same answer every time.
    """
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        return f"bad address {value!r}: {error}"
    return None


def _read_file(folder: Path, name: str, problems: list[EditionProblem]) -> _Located | None:
    path = folder / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(EditionProblem(name, "", "file is missing"))
        return None
    except UnicodeDecodeError as error:
        problems.append(EditionProblem(name, "", f"not UTF-8 text ({error.reason})"))
        return None
    try:
        return _load_located(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(error, "problem", None) or str(error)
        problems.append(
            EditionProblem(name, f"line {line}" if line else "", f"YAML syntax: {reason}", line)
        )
        return None


# --- newsletter.yaml ----------------------------------------------------------------------------

_PROFILE_REQUIRED = ("name", "from", "site", "languages", "default_language", "about")
_PROFILE_OPTIONAL = ("reply_to",)


def _check_profile(located: _Located) -> tuple[NewsletterProfile | None, list[EditionProblem]]:
    check = _Checker(PROFILE_FILE, located)
    data = check.mapping(located.value, "", _PROFILE_REQUIRED, _PROFILE_OPTIONAL)
    if data is None:
        return None, check.problems
    languages = _check_languages(check, data)
    default = check.text(data, "default_language", "")
    if default is not None and languages and default not in languages:
        check.problem("default_language", f"'{default}' is not in 'languages'")
    site = check.url(data, "site", "")
    reply_to = check.text(data, "reply_to", "")
    if reply_to is not None and (reason := _address_problem(reply_to)):
        check.problem("reply_to", reason)
    name = check.per_language(data, "name", "", languages)
    about = check.per_language(data, "about", "", languages)
    from_address, from_name = _check_sender(check, data.get("from"), languages)
    # Both become header phrases (From, List-Id): a line break would start a new header.
    _one_line_each(check, name, "name")
    _one_line_each(check, from_name, "from.name")
    if check.problems:
        return None, check.problems
    assert name and about and from_name and from_address and site and default
    profile = NewsletterProfile(
        name=name,
        from_address=from_address,
        from_name=from_name,
        reply_to=reply_to,
        site=site,
        languages=languages,
        default_language=default,
        about=about,
    )
    return profile, []


def _check_languages(check: _Checker, data: Mapping[str, Any]) -> tuple[str, ...]:
    value = data.get("languages")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        check.problem("languages", "expected a non-empty list of language codes, like [en, be]")
        return ()
    languages: list[str] = []
    for index, language in enumerate(value):
        if not isinstance(language, str) or not LANGUAGE_TAG.match(language):
            check.problem(f"languages[{index}]", f"not a language code: {language!r}")
        elif language in languages:
            check.problem(f"languages[{index}]", f"language '{language}' listed twice")
        else:
            languages.append(language)
    return tuple(languages)


def _check_sender(
    check: _Checker, value: Any, languages: tuple[str, ...]
) -> tuple[str | None, dict[str, str] | None]:
    if value is None:
        return None, None
    sender = check.mapping(value, "from", ("address", "name"))
    if sender is None:
        return None, None
    address = check.text(sender, "address", "from")
    if address is not None and (reason := _address_problem(address)):
        check.problem("from.address", reason)
        address = None
    return address, check.per_language(sender, "name", "from", languages)


def read_newsletter_profile(path: Path) -> NewsletterProfile:
    """Read a ``newsletter.yaml`` file.

    Raises :class:`EditionInvalid` listing every problem in it.
    """
    problems: list[EditionProblem] = []
    located = _read_file(path.parent, path.name, problems)
    if located is None:
        raise EditionInvalid(problems)
    profile, problems = _check_profile(located)
    if profile is None:
        raise EditionInvalid(problems)
    return profile


# --- <language>.yaml ----------------------------------------------------------------------------

_CONTENT_REQUIRED = ("edition", "language", "period", "subject", "preheader", "items")
_ITEM_REQUIRED = ("title", "url", "lead", "body")
_ITEM_OPTIONAL = ("section", "standfirst", "image")


def _check_content(
    file: str, located: _Located, language: str
) -> tuple[EditionContent | None, list[EditionProblem]]:
    check = _Checker(file, located)
    data = check.mapping(located.value, "", _CONTENT_REQUIRED)
    if data is None:
        return None, check.problems
    key = check.text(data, "edition", "")
    if key is not None and not EDITION_KEY.match(key):
        check.problem("edition", f"edition key {key!r} must be letters, digits, '.', '_' or '-'")
    declared = check.text(data, "language", "")
    if declared is not None and declared != language:
        check.problem("language", f"says '{declared}' but the file is for '{language}'")
    start, end = _check_period(check, data.get("period"))
    subject = _single_line(check, data, "subject")
    preheader = _single_line(check, data, "preheader")
    items = _check_items(check, data.get("items"))
    if check.problems:
        return None, check.problems
    assert key and start and end and subject and preheader is not None
    content = EditionContent(
        key=key,
        language=language,
        period_start=start,
        period_end=end,
        subject=subject,
        preheader=preheader,
        items=tuple(items),
    )
    return content, []


def _one_line_each(check: _Checker, texts: Mapping[str, str] | None, where: str) -> None:
    for language, text in (texts or {}).items():
        if any(ord(ch) < 32 for ch in text):
            check.problem(f"{where}.{language}", "must be one line without control characters")


def _single_line(check: _Checker, data: Mapping[str, Any], key: str) -> str | None:
    value = check.text(data, key, "")
    if value is not None and ("\n" in value.strip() or "\r" in value):
        # A line break in a Subject header would end the header (RFC 5322 section 2.2).
        check.problem(key, "must be one line")
        return None
    return None if value is None else value.strip()


def _check_period(check: _Checker, value: Any) -> tuple[date | None, date | None]:
    if value is None:
        return None, None
    period = check.mapping(value, "period", ("start", "end"))
    if period is None:
        return None, None
    start = check.day(period, "start", "period")
    end = check.day(period, "end", "period")
    if start and end and end < start:
        check.problem("period.end", f"period ends ({end}) before it starts ({start})")
        return None, None
    return start, end


def _check_items(check: _Checker, value: Any) -> list[EditionItem]:
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        check.problem("items", "expected a non-empty list of items")
        return []
    items = []
    for index, raw in enumerate(value):
        item = _check_item(check, raw, f"items[{index}]")
        if item is not None:
            items.append(item)
    return items


def _check_item(check: _Checker, value: Any, path: str) -> EditionItem | None:
    before = len(check.problems)
    data = check.mapping(value, path, _ITEM_REQUIRED, _ITEM_OPTIONAL)
    if data is None:
        return None
    texts = {key: check.text(data, key, path) for key in ("section", "title", "standfirst")}
    lead = check.text(data, "lead", path)
    body = check.text(data, "body", path)
    url = check.url(data, "url", path)
    image = _check_image(check, data.get("image"), f"{path}.image")
    if len(check.problems) > before:
        return None
    assert texts["title"] and url and lead and body
    return EditionItem(
        section=_strip(texts["section"]),
        title=texts["title"].strip(),
        standfirst=_strip(texts["standfirst"]),
        url=url,
        image=image,
        lead=lead.strip(),
        body=body.strip() + "\n",
    )


def _strip(value: str | None) -> str | None:
    return None if value is None else value.strip()


def _check_image(check: _Checker, value: Any, path: str) -> EditionImage | None:
    if value is None:
        return None
    data = check.mapping(value, path, ("url",), ("alt", "credit"))
    if data is None:
        return None
    url = check.url(data, "url", path)
    alt = data.get("alt")
    if not isinstance(alt, str) or not alt.strip():
        # Blind readers and mail clients that block images see only the alt text (WCAG 1.1.1).
        check.problem(f"{path}.alt" if "alt" in data else path, "image without alt text")
        alt = None
    credit = check.text(data, "credit", path)
    if url is None or alt is None:
        return None
    return EditionImage(url=url, alt=alt.strip(), credit=_strip(credit))


# --- the whole folder ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Summary:
    """What must agree between languages, read from the raw YAML even when a file has errors."""

    file: str
    located: _Located
    key: Any
    period: Any
    item_count: int | None


def _summarise(file: str, located: _Located) -> _Summary:
    data = located.value if isinstance(located.value, Mapping) else {}
    period = data.get("period")
    if isinstance(period, Mapping):
        period = (str(period.get("start")), str(period.get("end")))
    items = data.get("items")
    count = len(items) if isinstance(items, list) else None
    return _Summary(file, located, data.get("edition"), period, count)


def _scan(folder: Path) -> tuple[EditionSource | None, list[EditionProblem]]:
    problems: list[EditionProblem] = []
    if not folder.is_dir():
        return None, [EditionProblem(str(folder), "", "not a folder")]
    located = _read_file(folder, PROFILE_FILE, problems)
    profile = None
    if located is not None:
        profile, found = _check_profile(located)
        problems += found
    if profile is None:
        return None, problems
    contents: dict[str, EditionContent] = {}
    summaries: dict[str, _Summary] = {}
    for language in profile.languages:
        file = f"{language}.yaml"
        located = _read_file(folder, file, problems)
        if located is None:
            continue
        content, found = _check_content(file, located, language)
        problems += sorted(found, key=lambda problem: problem.line or 0)
        summaries[language] = _summarise(file, located)
        if content is not None:
            contents[language] = content
    problems += _stray_files(folder, profile)
    problems += _cross_language(profile, summaries, problems)
    if problems:
        return None, problems
    return EditionSource(newsletter=profile, contents=contents), []


def _stray_files(folder: Path, profile: NewsletterProfile) -> Iterator[EditionProblem]:
    expected = {PROFILE_FILE} | {f"{language}.yaml" for language in profile.languages}
    for path in sorted(folder.glob("*.y*ml")):
        if path.name not in expected:
            yield EditionProblem(
                path.name,
                "",
                "unknown file: its language is not in newsletter.yaml 'languages' "
                f"({_listing(profile.languages)})",
            )


def _cross_language(
    profile: NewsletterProfile, summaries: Mapping[str, _Summary], known: list[EditionProblem]
) -> Iterator[EditionProblem]:
    """Compare each language with the default one: same key, same period, same item count.

    A field that already has a problem in the default language is not compared: the editor
    would otherwise read the same mistake once per language.
    """
    reference = summaries.get(profile.default_language)
    if reference is None:
        return
    broken = {p.location.split(".")[0] for p in known if p.file == reference.file}
    checks: list[tuple[str, Callable[[_Summary], Any], str]] = [
        ("edition", lambda s: s.key, "edition key"),
        ("period", lambda s: s.period, "period"),
        ("items", lambda s: s.item_count, "number of items"),
    ]
    for summary in summaries.values():
        if summary is reference:
            continue
        for location, value, what in checks:
            mine, theirs = value(summary), value(reference)
            if location in broken or mine is None or theirs is None or mine == theirs:
                continue  # a missing value is reported in its own file
            yield EditionProblem(
                summary.file,
                location,
                f"{what} {_show(mine)} differs from {reference.file}: {_show(theirs)}",
                summary.located.line(location),
            )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " to ".join(str(part) for part in value)
    return str(value)


def check_edition(folder: Path) -> list[EditionProblem]:
    """Every problem of the edition in ``folder``, in file order; an empty list means valid.

    Checks: files present and valid YAML, required fields present, unknown keys, texts not empty,
    absolute http(s) URLs, images with alt text, period end not before start, subject and
    preheader on one line, every language of ``newsletter.yaml`` present with the same edition
    key, period and item count as the default language. Rendering checks (templates, size) are
    :func:`worker.editions.rendering.check_renditions`.
    """
    return _scan(folder)[1]


def read_edition(folder: Path) -> EditionSource:
    """Read the edition in ``folder``.

    Raises :class:`EditionInvalid` with every problem :func:`check_edition` finds.
    """
    source, problems = _scan(folder)
    if source is None:
        raise EditionInvalid(problems)
    return source
