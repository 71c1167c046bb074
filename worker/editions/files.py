"""Edition sources: the folder an editor writes by hand, read and checked.

An edition folder holds ``newsletter.yaml`` (the newsletter profile: names, sender, languages) and
one ``<language>.yaml`` per language of the newsletter (subject, preheader, period, items with
Markdown bodies); ``examples/editions/2024-W28/`` is the model and ``docs/editions.md`` the
reference. :func:`check_edition` reports every problem at once, each with its file, field path and
line; :func:`read_edition` returns typed values or raises :class:`EditionInvalid` with that list.
The shape of each file is :mod:`worker.editions.schema` (pydantic); this module finds the line of
each field and checks what spans files: languages against ``newsletter.yaml``, and every language
against the default one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from worker.editions.schema import (
    Absent,
    ContentFile,
    FieldError,
    Item,
    ProfileFile,
    field_errors,
    is_local_image,
    listing,
    valid_languages,
)

PROFILE_FILE = "newsletter.yaml"


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
    # The postal address / publisher line printed in every footer (CAN-SPAM 15 U.S.C. 7704(a)(5),
    # German TMG/DDG imprint); one line, the same in every language. None: the check warns.
    publisher: str | None = None
    # The website's feed per language (``feeds:``), for starting an edition from the articles
    # already published (worker/editions/feeds.py); a language may have none.
    feeds: Mapping[str, str] = field(default_factory=dict)
    # The newsletter's IANA time zone (``timezone:``); an edition's period is in its days.
    timezone: str = "UTC"


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
    """One language of one edition, from ``<language>.yaml`` (e.g. ``en.yaml``).

    ``items`` are the articles this language has, in file order; ``absent`` the 0-based positions
    in the file's ``items`` list of the ``absent: true`` placeholders (articles this language does
    not have), which keep every language's items aligned by position. Renderings use ``items``
    only; :meth:`positions` gives each item's position in the file.
    """

    key: str
    language: str
    period_start: date
    period_end: date
    subject: str
    preheader: str
    items: tuple[EditionItem, ...]
    absent: tuple[int, ...] = ()

    def positions(self) -> list[int]:
        """The position in the file's ``items`` list of each entry of ``items``, in order."""
        absent = set(self.absent)
        total = len(self.items) + len(absent)
        return [n for n in range(total) if n not in absent]

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
            "absent": list(self.absent),
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
            absent=tuple(int(n) for n in data.get("absent") or ()),
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


# --- checking against the schema (worker/editions/schema.py) ---------------------------------

_Model = TypeVar("_Model", bound=BaseModel)


def _validated(
    file: str, located: _Located, model: type[_Model], context: dict[str, Any] | None = None
) -> tuple[_Model | None, list[EditionProblem]]:
    """``located`` validated as ``model``, and every problem of the file (duplicate keys too).

    The model is None when validation failed; problems may exist even when it succeeded.
    """
    problems = [
        # PyYAML keeps the last duplicate silently; an editor almost never means that.
        EditionProblem(file, path, "key appears twice (the last one would win)", line)
        for path, line in located.duplicates
    ]
    try:
        return model.model_validate(located.value, context=context), problems
    except ValidationError as error:
        found = field_errors(error, model)
        return None, problems + [_located_problem(file, located, each) for each in found]


def _located_problem(file: str, located: _Located, error: FieldError) -> EditionProblem:
    """``error`` with its line: a missing field's parent line, else the field's own.

    A field that is absent from the file (an image's ``alt``) is reported at its nearest
    ancestor, where the editor has to add it.
    """
    path = error.path
    if error.absent:
        line = located.line(_parent(path))
    else:
        while path and path not in located.lines:
            path = _parent(path)
        line = located.line(path)
    location = path or (f"line {line}" if line is not None else "")
    return EditionProblem(file, location, error.reason, line)


def _problem_at(file: str, located: _Located, path: str, reason: str) -> EditionProblem:
    return EditionProblem(file, path, reason, located.line(path))


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


def _check_profile(located: _Located) -> tuple[NewsletterProfile | None, list[EditionProblem]]:
    parsed, problems = _validated(PROFILE_FILE, located, ProfileFile)
    raw = located.value if isinstance(located.value, Mapping) else {}
    languages = valid_languages(raw.get("languages"))
    problems += _language_coverage(located, raw, languages)
    if parsed is None or problems:
        return None, problems

    def ordered(texts: Mapping[str, str]) -> dict[str, str]:
        return {language: texts[language] for language in languages}

    profile = NewsletterProfile(
        name=ordered(parsed.name),
        from_address=parsed.sender.address,
        from_name=ordered(parsed.sender.name),
        reply_to=parsed.reply_to,
        site=parsed.site,
        languages=languages,
        default_language=parsed.default_language,
        about=ordered(parsed.about),
        publisher=parsed.publisher,
        feeds={language: url for language, url in (parsed.feeds or {}).items()},
        timezone=parsed.timezone or "UTC",
    )
    return profile, []


def _language_coverage(
    located: _Located, raw: Mapping[str, Any], languages: tuple[str, ...]
) -> list[EditionProblem]:
    """Profile fields that must agree with ``languages``: the default language, and one text per
    language (no more, no fewer) in ``name``, ``about`` and ``from.name``.

    Read from the raw YAML, so they are reported alongside the profile's other problems.
    """
    if not languages:
        return []  # the list itself is wrong; ProfileFile said why
    problems = []
    default = raw.get("default_language")
    if isinstance(default, str) and default.strip() and default.strip() not in languages:
        reason = f"'{default}' is not in 'languages'"
        problems.append(_problem_at(PROFILE_FILE, located, "default_language", reason))
    sender = raw.get("from")
    feeds = raw.get("feeds")
    if isinstance(feeds, Mapping):  # a language may have no feed, but no feed without a language
        problems += [
            _problem_at(
                PROFILE_FILE,
                located,
                f"feeds.{language}",
                f"language '{language}' is not in 'languages' ({listing(languages)})",
            )
            for language in feeds
            if language not in languages
        ]
    texts = {
        "name": raw.get("name"),
        "about": raw.get("about"),
        "from.name": sender.get("name") if isinstance(sender, Mapping) else None,
    }
    for where, value in texts.items():
        if isinstance(value, Mapping):
            problems += _per_language_coverage(located, where, value, languages)
    return problems


def _per_language_coverage(
    located: _Located, where: str, texts: Mapping[Any, Any], languages: tuple[str, ...]
) -> list[EditionProblem]:
    problems = [
        _problem_at(PROFILE_FILE, located, where, f"missing language '{language}'")
        for language in languages
        if language not in texts
    ]
    problems += [
        _problem_at(
            PROFILE_FILE,
            located,
            f"{where}.{language}",
            f"language '{language}' is not in 'languages' ({listing(languages)})",
        )
        for language in texts
        if language not in languages
    ]
    return problems


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


def _check_content(
    file: str, located: _Located, language: str
) -> tuple[EditionContent | None, list[EditionProblem]]:
    parsed, problems = _validated(file, located, ContentFile, {"language": language})
    if parsed is None or problems:
        return None, problems
    content = EditionContent(
        key=parsed.edition,
        language=language,
        period_start=parsed.period.start,
        period_end=parsed.period.end,
        subject=parsed.subject,
        preheader=parsed.preheader,
        items=tuple(_item(item) for item in parsed.items if not isinstance(item, Absent)),
        absent=tuple(n for n, item in enumerate(parsed.items) if isinstance(item, Absent)),
    )
    return content, []


def _item(item: Item) -> EditionItem:
    image = item.image
    return EditionItem(
        section=item.section,
        title=item.title,
        standfirst=item.standfirst,
        url=item.url,
        image=None if image is None else EditionImage(image.url, image.alt, image.credit),
        lead=item.lead,
        body=item.body + "\n",  # Markdown source ends with a line break
    )


# --- the whole folder ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Summary:
    """What must agree between languages, read from the raw YAML even when a file has errors."""

    file: str
    located: _Located
    key: Any
    period: Any
    item_count: int | None
    # (title, url) of each item as written, for naming the items one language has more of
    items: tuple[tuple[str, str], ...] = ()


def _summarise(file: str, located: _Located) -> _Summary:
    data = located.value if isinstance(located.value, Mapping) else {}
    period = data.get("period")
    if isinstance(period, Mapping):
        period = (str(period.get("start")), str(period.get("end")))
    items = data.get("items")
    count = len(items) if isinstance(items, list) else None
    written = tuple(
        (str(item.get("title") or ""), str(item.get("url") or ""))
        if isinstance(item, Mapping)
        else ("", "")
        for item in (items if isinstance(items, list) else [])
    )
    return _Summary(file, located, data.get("edition"), period, count, written)


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
    problems += _missing_images(folder, contents, summaries)
    problems += _cross_language(profile, summaries, problems)
    if problems:
        return None, problems
    return EditionSource(newsletter=profile, contents=contents), []


def local_images(source: EditionSource) -> list[str]:
    """The file names of the images ``source`` keeps in its own folder (``border.jpg``), sorted;
    ``edition load`` copies them to ``NEWSLETTER_IMAGES_DIR`` and the web app serves them."""
    return sorted(
        {
            item.image.url
            for content in source.contents.values()
            for item in content.items
            if item.image is not None and is_local_image(item.image.url)
        }
    )


def _missing_images(
    folder: Path, contents: Mapping[str, EditionContent], summaries: Mapping[str, _Summary]
) -> Iterator[EditionProblem]:
    for language, content in contents.items():
        for n, item in zip(content.positions(), content.items, strict=True):
            name = item.image.url if item.image is not None else ""
            if is_local_image(name) and not (folder / name).is_file():
                where = f"items[{n}].image.url"
                yield EditionProblem(
                    f"{language}.yaml",
                    where,
                    f"image file {name!r} is not in the edition folder",
                    summaries[language].located.line(where),
                )


def _stray_files(folder: Path, profile: NewsletterProfile) -> Iterator[EditionProblem]:
    expected = {PROFILE_FILE} | {f"{language}.yaml" for language in profile.languages}
    for path in sorted(folder.glob("*.y*ml")):
        if path.name not in expected:
            yield EditionProblem(
                path.name,
                "",
                "unknown file: its language is not in newsletter.yaml 'languages' "
                f"({listing(profile.languages)})",
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
            reason = f"{what} {_show(mine)} differs from {reference.file}: {_show(theirs)}"
            if location == "items":
                reason += "; " + _extra_items(summary, reference, profile.languages)
            yield EditionProblem(summary.file, location, reason, summary.located.line(location))


MAX_NAMED_ITEMS = 5  # items named in one "number of items" problem; the rest are counted


def _extra_items(one: _Summary, other: _Summary, languages: Sequence[str]) -> str:
    """Which items the language with more items has that the other lacks, by position and
    title: the editor removes them or adds their translation. Items are paired by their link
    once the language's own path segment is taken out (``/ru/2026/12/x/`` = ``/en/2026/12/x/``,
    as multilingual sites name translations); when that does not account for the difference,
    the last items are named, as ``edition`` pairs items in order."""
    more, fewer = (one, other) if len(one.items) > len(other.items) else (other, one)
    extra = len(more.items) - len(fewer.items)
    theirs = {_link_key(url, languages) for _, url in fewer.items}
    unpaired = [
        n for n, (_, url) in enumerate(more.items) if _link_key(url, languages) not in theirs
    ]
    how = f"no item of {fewer.file} has the same link"
    if len(unpaired) != extra:
        unpaired = list(range(len(fewer.items), len(more.items)))
        how = "the last ones: items pair up in order"
    named = [f"items[{n}] {_short(more.items[n][0])!r}" for n in unpaired[:MAX_NAMED_ITEMS]] + (
        [f"{len(unpaired) - MAX_NAMED_ITEMS} more"] if len(unpaired) > MAX_NAMED_ITEMS else []
    )
    return f"{more.file} has {extra} more: {', '.join(named)} ({how})"


def _link_key(url: str, languages: Sequence[str]) -> str:
    """``url`` as host and path, without scheme, query, empty segments and any segment that is
    one of the newsletter's ``languages``: ``https://x.org/ru/2026/x/`` -> ``x.org/2026/x``."""
    parts = urlsplit(url.strip())
    segments = [s for s in parts.path.split("/") if s and s.lower() not in languages]
    return f"{parts.netloc.lower()}/{'/'.join(segments)}"


def _short(title: str, limit: int = 80) -> str:
    title = " ".join(title.split())
    return title if len(title) <= limit else title[: limit - 1] + "…"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " to ".join(str(part) for part in value)
    return str(value)


def check_edition(folder: Path) -> list[EditionProblem]:
    """Every problem of the edition in ``folder``, in file order; an empty list means valid.

    Checks: files present and valid YAML, required fields present, unknown keys, texts not empty,
    absolute http(s) URLs, images with alt text, period end not before start, subject and
    preheader on one line, every language of ``newsletter.yaml`` present with the same edition
    key, period and item count as the default language (an ``absent: true`` placeholder counts:
    it stands for an article the language does not have, and needs no other field). Rendering
    checks (templates, size) are :func:`worker.editions.rendering.check_renditions`.
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
