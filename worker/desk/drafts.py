"""An edition as the desk edits it: the languages side by side, item by item.

An edition folder matches its languages' items by position (``items[0]`` of ``en.yaml`` is the
same article as ``items[0]`` of ``be.yaml``; ``newsletter edition check`` refuses files whose item
counts differ). The desk shows that as rows: row *n* holds each language's item *n*, or
:data:`MISSING` where a language lacks it, so a missing translation is seen, never dropped. An
article that one language does not have at all is marked so by the editor ("Not in
Belarusian"): the cell becomes :data:`ABSENT`, written to the folder as the placeholder
``- absent: true``, which keeps the rows aligned and is left out of that language's mail; a
missing cell without that decision stays a problem.

Saving runs exactly the checks of ``newsletter edition check``: the draft is written as an edition
folder (``newsletter.yaml`` from the stored profile, one ``<language>.yaml`` per language) into a
temporary folder, checked with :func:`worker.editions.files.check_edition` and rendered with
:func:`worker.editions.rendering.render_source`. Each problem is mapped back to the form field at
fault (language, row, field). A valid draft is stored with
:func:`worker.editions.store.save_edition`, the same as ``newsletter edition load``; a draft with
problems is stored too (the editor must not lose work) with its problems in the stored JSON
(``"problems"``), which refuses every send of it
(:func:`worker.sending.sends.create_send`, ``EditionHasProblems``) until a save without problems.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from babel import Locale
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.editions.files import (
    PROFILE_FILE,
    EditionInvalid,
    EditionProblem,
    EditionSource,
    NewsletterProfile,
    check_edition,
    read_edition,
)
from worker.editions.rendering import RenderedMessage, render_source
from worker.editions.resources import foreign_resource_warnings, host_of
from worker.editions.store import (
    PROBLEMS_KEY,
    EditionLocked,
    find_edition,
    is_locked,
    profile_of,
    save_edition,
)
from worker.models import Edition, EditionContentRow, Newsletter

# The fields of one item, in form order; ``image.*`` are the image's.
ITEM_FIELDS = (
    "section",
    "title",
    "standfirst",
    "url",
    "image.url",
    "image.alt",
    "image.credit",
    "lead",
    "body",
)
# Fields an editor must fill (the schema's required ones); the others may stay empty.
REQUIRED_ITEM_FIELDS = ("title", "url", "lead", "body")
# Stored with a draft that has problems: the row of each stored item (a language may lack rows),
# and the period as typed when it is not a date.
ROWS_KEY = "draft_rows"
ROW_COUNT_KEY = "draft_row_count"  # rows may be empty in every language (an added row)
# The rows marked "not in this language" (EditionContent.to_json's "absent": file positions,
# which are the rows when the draft is valid).
ABSENT_KEY = "absent"
PERIOD_KEY = "draft_period"

MISSING = None
"""A cell of a language that lacks the row's item."""


class NoEdition(LookupError):
    """No edition with that key."""


@dataclass(frozen=True)
class ItemCell:
    """One language's item of one row: every field as text (``""`` for an absent optional one),
    keyed by :data:`ITEM_FIELDS`."""

    values: Mapping[str, str]
    absent: bool = False  # the editor said the language has no version of this article

    def __getitem__(self, name: str) -> str:
        return self.values.get(name, "")

    @property
    def empty(self) -> bool:
        """Whether every field is blank and the cell is not :data:`ABSENT`: it counts as
        :data:`MISSING`."""
        return not self.absent and not any(value.strip() for value in self.values.values())


ABSENT = ItemCell({}, absent=True)
"""A cell of a language that does not have the row's article, by the editor's decision."""


@dataclass(frozen=True)
class LanguageDraft:
    """One language of a draft: its subject and preheader, and one cell per row
    (:data:`MISSING` where the language lacks the row's item)."""

    language: str
    subject: str
    preheader: str
    cells: tuple[ItemCell | None, ...]


@dataclass(frozen=True)
class FieldProblem:
    """One problem of a draft, at its form field: ``language`` (None: the whole edition, e.g.
    the period), ``row`` (None: not an item's), ``field`` (``subject``, ``title``, ``image.alt``,
    ``period.start``, ``items`` for the list itself, ``""`` for the language as a whole) and the
    reason as ``newsletter edition check`` words it."""

    language: str | None
    row: int | None
    field: str
    reason: str
    # The desk's own problems (rows missing, item counts) carry a code and its values, which
    # the page words in the desk's language; ``reason`` is their English wording.
    code: str = ""
    params: tuple[tuple[str, str], ...] = ()

    @property
    def values(self) -> dict[str, str]:
        """``params`` as a mapping, for the page's wording."""
        return dict(self.params)

    @property
    def name(self) -> str:
        """The form field's name (:func:`field_name`), or ``""`` for the language as a whole."""
        if self.row is None and self.field in ("", "items"):
            return self.language or ""
        return field_name(self.language, self.row, self.field)

    def to_json(self) -> dict[str, Any]:
        return {"language": self.language, "row": self.row, "field": self.field,
                "reason": self.reason, "code": self.code,
                "params": dict(self.params)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldProblem:
        row = data.get("row")
        params = data.get("params") or {}
        return cls(data.get("language"), None if row is None else int(row),
                   str(data.get("field", "")), str(data.get("reason", "")),
                   str(data.get("code") or ""),
                   tuple((str(k), str(v)) for k, v in params.items()))  # fmt: skip


def field_name(language: str | None, row: int | None, name: str) -> str:
    """The form field name of a value: ``be.subject``, ``be.items[2].image.alt``,
    ``period.start`` (the period is the edition's, shared by every language)."""
    if name.startswith("period"):
        return name if name != "period" else "period.start"
    if row is not None:
        return f"{language}.items[{row}].{name}"
    return f"{language}.{name}"


@dataclass(frozen=True)
class Draft:
    """An edition as the desk shows it.

    ``languages`` in the newsletter's order (its default first is not implied); ``period`` as
    text (``YYYY-MM-DD``, or what the editor typed when it was not a date); ``problems`` from the
    last save (empty: the edition is valid and may be sent); ``locked``: a send of it exists, so
    it can no longer change (:class:`worker.editions.store.EditionLocked`).
    """

    key: str
    languages: tuple[str, ...]
    default_language: str
    period_start: str
    period_end: str
    texts: Mapping[str, LanguageDraft]
    problems: tuple[FieldProblem, ...] = ()
    warnings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    locked: bool = False

    @property
    def row_count(self) -> int:
        return max((len(text.cells) for text in self.texts.values()), default=0)

    def rows(self) -> list[dict[str, ItemCell | None]]:
        """Row by row, each language's cell (:data:`MISSING` where it has none)."""
        return [
            {
                language: _cell_at(self.texts[language].cells, row) if language in self.texts
                else MISSING
                for language in self.languages
            }
            for row in range(self.row_count)
        ]  # fmt: skip

    def problems_of(self, name: str) -> list[str]:
        """The reasons reported for the form field ``name`` (see :func:`field_name`)."""
        return [problem.reason for problem in self.problems_at(name)]

    def problems_at(self, name: str) -> list[FieldProblem]:
        """The problems reported for the form field ``name`` (see :func:`field_name`)."""
        return [problem for problem in self.problems if problem.name == name]

    @property
    def sendable(self) -> bool:
        """Whether the edition may be sent: stored without problems."""
        return not self.problems


def language_names(codes: Iterable[str], in_language: str) -> dict[str, str]:
    """Each language code of ``codes`` by its name in ``in_language`` (CLDR via Babel, first
    letter capitalised: ``{"be": "Belarusian"}`` in ``en``); a code Babel does not know stays
    the code."""
    names = {}
    for code in codes:
        try:
            name = Locale.parse(code).get_display_name(Locale.parse(in_language)) or code
        except (ValueError, LookupError):
            name = code
        names[code] = name[:1].upper() + name[1:]
    return names


def _cell_at(cells: tuple[ItemCell | None, ...], row: int) -> ItemCell | None:
    return cells[row] if row < len(cells) else MISSING


# --- reading what is stored ----------------------------------------------------------------------


def _cell_from_json(item: Mapping[str, Any]) -> ItemCell:
    image = item.get("image") or {}
    values = {
        "section": item.get("section") or "",
        "title": item.get("title") or "",
        "standfirst": item.get("standfirst") or "",
        "url": item.get("url") or "",
        "image.url": image.get("url") or "",
        "image.alt": image.get("alt") or "",
        "image.credit": image.get("credit") or "",
        "lead": item.get("lead") or "",
        "body": (item.get("body") or "").rstrip("\n"),
    }
    return ItemCell({name: str(value) for name, value in values.items()})


def _language_from_json(language: str, data: Mapping[str, Any]) -> LanguageDraft:
    items = [_cell_from_json(item) for item in data.get("items") or []]
    absent = {int(row) for row in data.get(ABSENT_KEY) or ()}
    total = len(items) + len(absent)
    rows = data.get(ROWS_KEY) or [row for row in range(total) if row not in absent]
    count = max(
        max(rows, default=-1) + 1, max(absent, default=-1) + 1, int(data.get(ROW_COUNT_KEY) or 0)
    )
    cells: list[ItemCell | None] = [MISSING] * count
    for row, cell in zip(rows, items, strict=False):
        cells[int(row)] = cell
    for row in absent:
        cells[row] = ABSENT
    return LanguageDraft(
        language, str(data.get("subject") or ""), str(data.get("preheader") or ""), tuple(cells)
    )


def load_draft(session: Session, key: str) -> Draft:
    """The stored edition ``key`` as a draft. Raises :class:`NoEdition` when there is none."""
    edition = find_edition(session, key)
    if edition is None:
        raise NoEdition(f"no edition {key}")
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    profile = profile_of(newsletter)
    rows = {
        row.language: row.data
        for row in session.scalars(
            select(EditionContentRow).where(EditionContentRow.edition_id == edition.id)
        )
    }
    languages = tuple(profile.languages) + tuple(
        sorted(language for language in rows if language not in profile.languages)
    )
    texts = {language: _language_from_json(language, data) for language, data in rows.items()}
    problems = [
        FieldProblem.from_json(problem)
        for data in rows.values()
        for problem in data.get(PROBLEMS_KEY) or []
    ]
    first = next(iter(rows.values()), {})
    period = first.get(PERIOD_KEY) or {}
    start = period.get("start", first.get("period_start", _iso(edition.period_start)))
    end = period.get("end", first.get("period_end", _iso(edition.period_end)))
    return Draft(
        key=edition.key,
        languages=languages,
        default_language=profile.default_language,
        period_start=str(start or ""),
        period_end=str(end or ""),
        texts=texts,
        problems=tuple(_unique(problems)),
        locked=is_locked(session, edition),
    )


def _iso(day: date | None) -> str:
    return day.isoformat() if day is not None else ""


def _unique(problems: Iterable[FieldProblem]) -> list[FieldProblem]:
    seen: dict[FieldProblem, None] = {}
    for problem in problems:
        seen.setdefault(problem)
    return list(seen)


def checked_draft(
    session: Session,
    key: str,
    public_url: str,
    *,
    image_files: Collection[str] = (),
    own_hosts: Iterable[str] = (),
) -> Draft:
    """The stored edition ``key`` as a draft, with its problems: those stored with it, else
    those the checks of ``newsletter edition check`` find now (an edition stored by another
    way than a checked folder or a desk save, e.g. started empty, has not been checked), and
    the warnings. Reads only. Raises :class:`NoEdition`."""
    draft = load_draft(session, key)
    if draft.problems:
        return draft
    edition = find_edition(session, key)
    assert edition is not None
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    checked = check_draft(
        draft, profile_of(newsletter), public_url, image_files=image_files, own_hosts=own_hosts
    )
    return Draft(
        key=draft.key,
        languages=draft.languages,
        default_language=draft.default_language,
        period_start=draft.period_start,
        period_end=draft.period_end,
        texts=draft.texts,
        problems=checked.problems,
        warnings=checked.warnings,
        locked=draft.locked,
    )


# --- the form ----------------------------------------------------------------------------------

_ITEM_NAME = re.compile(r"^([A-Za-z0-9_-]{1,16})\.items\[(\d{1,4})\]\.([a-z.]{1,20})$")
MAX_ROWS = 200


class FormError(ValueError):
    """A form the desk did not produce (too many rows, an unknown language): the message says
    which field."""


def draft_from_form(draft: Draft, form: Mapping[str, str]) -> Draft:
    """``draft`` with the values of a posted edit form (names per :func:`field_name`; text
    areas' CRLF read as LF; values stripped).

    ``rows`` is the number of rows; ``remove`` a row to delete in every language; ``add`` (any
    value) a new empty row at the end; ``<language>.items[n].absent`` (any value) marks a cell
    left empty as :data:`ABSENT` (a cell with text keeps its text). Languages and rows not in
    the form keep nothing: the form carries the whole edition. Raises :class:`FormError` for a
    row count that is not a number from 0 to :data:`MAX_ROWS`.
    """
    try:
        count = int(form.get("rows", str(draft.row_count)))
    except ValueError:
        raise FormError(f"rows: {form.get('rows')!r} is not a number") from None
    if not 0 <= count <= MAX_ROWS:
        raise FormError(f"rows: {count} is not between 0 and {MAX_ROWS}")
    cells: dict[str, list[dict[str, str]]] = {
        language: [dict.fromkeys(ITEM_FIELDS, "") for _ in range(count)]
        for language in draft.languages
    }
    marked: set[tuple[str, int]] = set()
    for name, value in form.items():
        match = _ITEM_NAME.match(name)
        if match is None:
            continue
        language, row, item_field = match[1], int(match[2]), match[3]
        if language in cells and row < count and item_field in ITEM_FIELDS:
            cells[language][row][item_field] = _clean(value)
        elif language in cells and row < count and item_field == "absent" and value:
            marked.add((language, row))
    removed = form.get("remove", "")
    drop = int(removed) if removed.isdigit() and int(removed) < count else None
    texts = {}
    for language in draft.languages:
        rows: list[ItemCell | None] = []
        for row, values in enumerate(cells[language]):
            if row == drop:
                continue
            cell = ItemCell(values)
            if cell.empty and (language, row) in marked:
                cell = ABSENT
            rows.append(MISSING if cell.empty else cell)
        if form.get("add"):
            rows.append(MISSING)
        texts[language] = LanguageDraft(
            language,
            _clean(form.get(f"{language}.subject", "")),
            _clean(form.get(f"{language}.preheader", "")),
            tuple(rows),
        )
    return Draft(
        key=draft.key,
        languages=draft.languages,
        default_language=draft.default_language,
        period_start=_clean(form.get("period.start", draft.period_start)),
        period_end=_clean(form.get("period.end", draft.period_end)),
        texts=texts,
        locked=draft.locked,
    )


def _clean(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n").strip()


# --- checking: the draft as an edition folder ------------------------------------------------


def _profile_yaml(profile: NewsletterProfile) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": dict(profile.name),
        "from": {"address": profile.from_address, "name": dict(profile.from_name)},
        "site": profile.site,
        "languages": list(profile.languages),
        "default_language": profile.default_language,
        "about": dict(profile.about),
    }
    if profile.reply_to:
        data["reply_to"] = profile.reply_to
    if profile.publisher:
        data["publisher"] = profile.publisher
    if profile.feeds:
        data["feeds"] = dict(profile.feeds)
    if profile.timezone != "UTC":
        data["timezone"] = profile.timezone
    return data


def _item_yaml(cell: ItemCell) -> dict[str, Any]:
    if cell.absent:
        return {"absent": True}
    item: dict[str, Any] = {}
    for name in ("section", "title", "standfirst", "url"):
        if cell[name] or name in REQUIRED_ITEM_FIELDS:
            item[name] = cell[name]
    if cell["image.url"] or cell["image.alt"] or cell["image.credit"]:
        image = {"url": cell["image.url"], "alt": cell["image.alt"]}
        if cell["image.credit"]:
            image["credit"] = cell["image.credit"]
        item["image"] = image
    item["lead"] = cell["lead"]
    item["body"] = cell["body"]
    return item


def content_yaml(draft: Draft, language: str) -> tuple[dict[str, Any], list[int]]:
    """The ``<language>.yaml`` mapping of ``language`` (what ``newsletter edition check``
    reads) and the row of each of its items (missing cells are left out; an :data:`ABSENT`
    cell is the placeholder ``absent: true``)."""
    text = draft.texts[language]
    present = [(row, cell) for row, cell in enumerate(text.cells) if cell is not MISSING]
    return {
        "edition": draft.key,
        "language": language,
        "period": {"start": draft.period_start, "end": draft.period_end},
        "subject": text.subject,
        "preheader": text.preheader,
        "items": [_item_yaml(cell) for _, cell in present],
    }, [row for row, _ in present]


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), allow_unicode=True, sort_keys=False, width=1_000_000)


def write_folder(
    draft: Draft, profile: NewsletterProfile, folder: Path, image_files: Collection[str] = ()
) -> dict[str, list[int]]:
    """Write ``draft`` as an edition folder into ``folder`` (which exists); returns each
    language's item rows. ``image_files``: names of the edition's own images that are served
    (``NEWSLETTER_IMAGES_DIR``): an empty stand-in of each is written, so that the check finds
    them."""
    (folder / PROFILE_FILE).write_text(_dump(_profile_yaml(profile)), "utf-8")
    rows: dict[str, list[int]] = {}
    for language in draft.texts:
        data, rows[language] = content_yaml(draft, language)
        (folder / f"{language}.yaml").write_text(_dump(data), "utf-8")
    for name in image_files:
        if "/" not in name and "\\" not in name and not name.startswith("."):
            (folder / name).touch()
    return rows


@dataclass(frozen=True)
class Checked:
    """The outcome of checking a draft: the edition when valid (None otherwise), its renditions,
    every problem at its field, and the warnings per language (they do not stop a send)."""

    source: EditionSource | None
    renditions: Mapping[str, RenderedMessage]
    problems: tuple[FieldProblem, ...]
    warnings: Mapping[str, tuple[str, ...]]


def check_draft(
    draft: Draft,
    profile: NewsletterProfile,
    public_url: str,
    *,
    image_files: Collection[str] = (),
    own_hosts: Iterable[str] = (),
) -> Checked:
    """Run the checks of ``newsletter edition check`` on ``draft`` (see the module docstring).

    ``own_hosts``: hosts besides the site's and the public URL's that images may come from
    (``NEWSLETTER_IMAGE_HOSTS``), for the same warnings the command prints. A missing cell is
    reported at the row it is missing from, as well as the count mismatch the check reports.
    """
    with tempfile.TemporaryDirectory(prefix="desk-draft-") as name:
        folder = Path(name)
        rows = write_folder(draft, profile, folder, image_files)
        problems = check_edition(folder)
        source: EditionSource | None = None
        renditions: dict[str, RenderedMessage] = {}
        if not problems:
            try:
                source = read_edition(folder)
                renditions = render_source(source, public_url)
            except EditionInvalid as error:
                source, problems = None, error.problems
    found = [
        _at_field(problem, rows)
        for problem in problems
        # the desk words a count that differs itself (_counts), with the rows it comes from
        if not (problem.location == "items" and problem.reason.startswith("number of items"))
    ]
    found += _counts(draft)
    found += _missing_cells(draft)
    hosts = [host_of(profile.site), host_of(public_url), *own_hosts]
    warnings = {
        language: (*rendered.warnings, *foreign_resource_warnings(rendered.html, hosts))
        for language, rendered in renditions.items()
    }
    return Checked(source, renditions, tuple(_unique(found)), warnings)


def _counts(draft: Draft) -> list[FieldProblem]:
    """Each language with fewer articles than the language with the most (an :data:`ABSENT`
    cell counts: it is the editor's "not in this language"), worded as the desk shows it:
    "ru has 3 articles, en 2 — mark the extra one as not in en, or add it"."""
    counts = {
        language: sum(1 for cell in text.cells if cell is not MISSING)
        for language, text in draft.texts.items()
    }
    if not counts:
        return []
    most = max(counts, key=lambda language: (counts[language], -draft.languages.index(language)))
    problems = []
    for language, count in counts.items():
        if count < counts[most]:
            extra = counts[most] - count
            reason = (
                f"{most} has {counts[most]} articles, {language} {count} — mark the extra "
                f"{'one' if extra == 1 else 'ones'} as not in {language}, or add "
                f"{'it' if extra == 1 else 'them'}"
            )
            params = (("more", most), ("more_count", str(counts[most])),
                      ("count", str(count)), ("extra", str(extra)))  # fmt: skip
            problems.append(FieldProblem(language, None, "items", reason, "count", params))
    return problems


def _missing_cells(draft: Draft) -> list[FieldProblem]:
    problems = []
    for row, cells in enumerate(draft.rows()):
        present = [
            language for language, cell in cells.items() if cell is not MISSING and not cell.absent
        ]
        for language, cell in cells.items():
            if cell is MISSING and present:
                reason = (
                    f"article {row + 1} is missing in {language}: write it, mark it as not in "
                    f"{language}, or remove the row"
                )
                problems.append(FieldProblem(language, row, "item", reason, "missing"))
            elif cell is MISSING or (not present and language == draft.languages[0]):
                reason = f"row {row + 1} has no article in any language: fill it in or remove it"
                problems.append(FieldProblem(language, row, "item", reason, "empty_row"))
    return problems


_LOCATION = re.compile(r"^items\[(\d+)\](?:\.(.+))?$")


def _at_field(problem: EditionProblem, rows: Mapping[str, list[int]]) -> FieldProblem:
    """``problem`` (file, field path) at the desk's form field."""
    language = problem.file.removesuffix(".yaml") if problem.file.endswith(".yaml") else None
    if language is None or language not in rows:
        # the newsletter's own files (profile, templates): not the editor's form
        return FieldProblem(None, None, "", str(problem))
    location = "" if problem.location.startswith("line ") else problem.location
    match = _LOCATION.match(location)
    if match is not None:
        index = int(match[1])
        row = rows[language][index] if index < len(rows[language]) else index
        return FieldProblem(language, row, match[2] or "item", problem.reason)
    if location.startswith("period"):
        return FieldProblem(None, None, location, problem.reason)
    return FieldProblem(language, None, location, problem.reason)


# --- saving ----------------------------------------------------------------------------------


def save_draft(
    session: Session,
    draft: Draft,
    now: datetime,
    public_url: str,
    *,
    image_files: Collection[str] = (),
    own_hosts: Iterable[str] = (),
) -> Draft:
    """Check ``draft`` and store it; returns it as stored, with its problems and warnings.

    Valid: stored with :func:`worker.editions.store.save_edition` (what ``edition load`` does).
    With problems: stored as typed, with the problems, which refuse any send until fixed.
    Raises :class:`NoEdition`, or :class:`EditionLocked` when a send of the edition exists (not
    cancelled): its content can no longer change. Flushes; the caller commits.
    """
    edition = find_edition(session, draft.key)
    if edition is None:
        raise NoEdition(f"no edition {draft.key}")
    if is_locked(session, edition):
        raise EditionLocked(f"edition {draft.key} has a send already; it cannot change any more")
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    checked = check_draft(
        draft,
        profile_of(newsletter),
        public_url,
        image_files=image_files,
        own_hosts=own_hosts,
    )
    if checked.source is not None and not checked.problems:
        save_edition(session, checked.source, now, newsletter.slug)
    else:
        _store_with_problems(session, edition, draft, checked.problems, now)
    stored = load_draft(session, draft.key)
    return Draft(
        key=stored.key,
        languages=stored.languages,
        default_language=stored.default_language,
        period_start=stored.period_start,
        period_end=stored.period_end,
        texts=stored.texts,
        problems=stored.problems,
        warnings=checked.warnings,
        locked=stored.locked,
    )


def _day_or(text: str, fallback: date | None) -> str | None:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return fallback.isoformat() if fallback is not None else None


def _store_with_problems(
    session: Session,
    edition: Edition,
    draft: Draft,
    problems: Iterable[FieldProblem],
    now: datetime,
) -> None:
    """Store ``draft`` as typed, in the JSON shape of ``EditionContent.to_json`` (so that every
    reader of stored editions still reads it), with its problems under ``"problems"``."""
    listed = [problem.to_json() for problem in problems]
    start = _day_or(draft.period_start, edition.period_start)
    end = _day_or(draft.period_end, edition.period_end)
    existing = {
        row.language: row
        for row in session.scalars(
            select(EditionContentRow).where(EditionContentRow.edition_id == edition.id)
        )
    }
    for index, language in enumerate(draft.languages):
        if language not in draft.texts:
            continue
        data, rows = content_yaml(draft, language)
        kept = [(row, item) for row, item in zip(rows, data["items"], strict=True)
                if "absent" not in item]  # fmt: skip
        stored: dict[str, Any] = {
            "key": draft.key,
            "language": language,
            "period_start": start or date.min.isoformat(),
            "period_end": end or date.min.isoformat(),
            "subject": data["subject"],
            "preheader": data["preheader"],
            "items": [_item_json(item) for _, item in kept],
            ABSENT_KEY: [
                row for row, item in zip(rows, data["items"], strict=True) if "absent" in item
            ],
            ROWS_KEY: [row for row, _ in kept],
            ROW_COUNT_KEY: draft.row_count,
            # every problem is kept once, with the first language's row
            PROBLEMS_KEY: listed if index == 0 else [],
        }
        if start != draft.period_start or end != draft.period_end:
            stored[PERIOD_KEY] = {"start": draft.period_start, "end": draft.period_end}
        row = existing.get(language)
        if row is None:
            session.add(EditionContentRow(edition_id=edition.id, language=language, data=stored))
        else:
            row.data = stored
    edition.updated_at = now
    session.flush()


def _item_json(item: Mapping[str, Any]) -> dict[str, Any]:
    """A ``<language>.yaml`` item as ``EditionContent.to_json`` stores it (body ends with a
    line break, absent optional fields None)."""
    image = item.get("image")
    return {
        "section": item.get("section"),
        "title": item.get("title", ""),
        "standfirst": item.get("standfirst"),
        "url": item.get("url", ""),
        "image": None
        if image is None
        else {"url": image["url"], "alt": image["alt"], "credit": image.get("credit")},
        "lead": item.get("lead", ""),
        "body": str(item.get("body", "")) + "\n",
    }
