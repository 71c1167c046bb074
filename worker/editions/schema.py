"""The shape of an edition folder's YAML files, as pydantic models.

:class:`ProfileFile` is ``newsletter.yaml``, :class:`ContentFile` one ``<language>.yaml``; both
take the plain values PyYAML returns (timestamps left as text) and refuse unknown keys. Every rule
raises its own message, worded for an editor; :func:`field_errors` turns a ``ValidationError``
into (field path, reason) pairs such as ``("items[0].url", "bad URL ...")``. Rules that compare a
file with the profile's ``languages`` or with the other languages live in
:mod:`worker.editions.files`, which also finds the line of each field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

# An edition key ends up in archive URLs and database keys: keep it to URL-safe characters.
EDITION_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A language tag as used for folder names, catalogues and the HTML lang attribute (BCP 47 subset).
LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")

# Error type of a field written with no value (``subject:``): reported like an absent one.
NO_VALUE = "no_value"


def _rule(reason: str) -> PydanticCustomError:
    """A validation error whose message is ``reason`` as written (no template braces)."""
    return PydanticCustomError("edition_rule", reason.replace("{", "{{").replace("}", "}}"))


def kind(value: Any) -> str:
    """Name the YAML value ``value`` is, for messages: ``nothing``, ``a list``, ``int 5``."""
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def listing(names: Any) -> str:
    """``names`` sorted and comma-separated, for messages."""
    return ", ".join(sorted(str(name) for name in names))


# --- values -------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Non-blank text, stripped. Raises NO_VALUE for None (``key:`` with nothing after it)."""
    if value is None:
        raise PydanticCustomError(NO_VALUE, "no value")
    if not isinstance(value, str):
        raise _rule(f"expected text, got {kind(value)}")
    if not value.strip():
        raise _rule("is empty")
    return value.strip()


def _language_text(value: Any) -> str:
    """Like :func:`_text`, but ``ru:`` with nothing is an empty text, not an absent field."""
    if value is None:
        raise _rule("is empty")
    return _text(value)


def _one_line(value: str) -> str:
    """``value`` unchanged when it has no line break; raises the rule otherwise."""
    # A line break in a Subject header would end the header (RFC 5322 section 2.2).
    if "\n" in value or "\r" in value:
        raise _rule("must be one line")
    return value


def _phrase(value: str) -> str:
    """``value`` unchanged when it has no control character (U+0000-U+001F)."""
    # Names become header phrases (From, List-Id): a control character could start a new header.
    if any(ord(ch) < 32 for ch in value):
        raise _rule("must be one line without control characters")
    return value


def url_problem(value: str) -> str | None:
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


def _url(value: Any) -> str:
    """An absolute http(s) URL (see :func:`url_problem`), stripped."""
    # Checked before stripping: a space inside a URL is the editor's mistake to see.
    text = _text(value)
    reason = url_problem(value)
    if reason:
        raise _rule(reason)
    return text


# An image kept in the edition folder (served by the web app at /images/<edition>/<file>):
# a plain file name with an image extension, no folder, no "..".
LOCAL_IMAGE = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}\.(?:jpe?g|png|gif|webp)$", re.I | re.A)


def is_local_image(url: str) -> bool:
    """Whether ``url`` names an image file of the edition folder (``border.jpg``)."""
    return bool(LOCAL_IMAGE.match(url))


def _image_url(value: Any) -> str:
    """An absolute http(s) URL, or the name of an image file in the edition folder
    (``border.jpg``: ASCII letters, digits, ``.``, ``_``, ``-``; jpg, png, gif or webp)."""
    if isinstance(value, str) and is_local_image(value):
        return value
    return _url(value)


def _feed_url(value: Any) -> str:
    """A feed's address: an absolute http(s) URL (see :func:`url_problem`), worded for feeds."""
    text = _language_text(value)
    reason = url_problem(value)
    if reason:
        raise _rule(f"feed address: {reason}")
    return text


def _time_zone(value: Any) -> str:
    """An IANA time zone name (``Europe/Minsk``) that this machine's zone database knows."""
    text = _text(value)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise _rule(
            f"unknown time zone {text!r} (expected an IANA name like Europe/Minsk)"
        ) from None
    return text


def _feeds(value: Any) -> Any:
    """``value`` when it is a mapping (language code -> feed URL); entries are checked after."""
    if value is None:
        raise PydanticCustomError(NO_VALUE, "no value")
    if not isinstance(value, Mapping):
        raise _rule(f"expected one feed address per language (en: https://…), got {kind(value)}")
    return value


def _address(value: str) -> str:
    """An address valid by RFC 5321/5322 syntax (email-validator). No DNS: checks run offline."""
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise _rule(f"bad address {value!r}: {error}") from None
    return value


def _day(value: Any) -> date:
    """A calendar date from ``2024-07-08`` (the loader leaves YAML timestamps as text)."""
    if value is None:
        raise PydanticCustomError(NO_VALUE, "no value")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _rule(f"expected a date like 2024-07-08, got {value!r}")


def _edition_key(value: str) -> str:
    """``value`` when it fits :data:`EDITION_KEY` (1-64 URL-safe characters)."""
    if not EDITION_KEY.match(value):
        raise _rule(f"edition key {value!r} must be letters, digits, '.', '_' or '-'")
    return value


def _language_code(value: Any) -> str:
    """``value`` when it is text matching :data:`LANGUAGE_TAG` (``en``, ``pt-BR``)."""
    if not isinstance(value, str) or not LANGUAGE_TAG.match(value):
        raise _rule(f"not a language code: {value!r}")
    return value


def _non_empty_list(what: str) -> BeforeValidator:
    """A validator passing on a non-empty list; ``what`` names the entries in its message."""

    def check(value: Any) -> Any:
        if value is None:
            raise PydanticCustomError(NO_VALUE, "no value")
        if not isinstance(value, list) or not value:
            raise _rule(f"expected a non-empty list of {what}")
        return value

    return BeforeValidator(check)


def _per_language(value: Any) -> Any:
    """``value`` when it is a mapping (language code -> text); its entries are checked after."""
    if value is None:
        raise PydanticCustomError(NO_VALUE, "no value")
    if not isinstance(value, Mapping):
        raise _rule(f"expected one text per language, got {kind(value)}")
    return value


def _unique(languages: list[str]) -> list[str]:
    """``languages`` unchanged when no code appears twice."""
    twice = sorted({language for language in languages if languages.count(language) > 1})
    if twice:
        raise _rule(f"language '{twice[0]}' listed twice")
    return languages


def _no_alt_text(value: Any) -> str:
    """The alt text, stripped; absent, not text or blank raises "image without alt text"."""
    if not isinstance(value, str) or not value.strip():
        raise _rule("image without alt text")
    return value.strip()


Text = Annotated[str, BeforeValidator(_text)]
OneLine = Annotated[str, BeforeValidator(_text), AfterValidator(_one_line)]
Url = Annotated[str, BeforeValidator(_url)]
ImageUrl = Annotated[str, BeforeValidator(_image_url)]
Address = Annotated[str, BeforeValidator(_text), AfterValidator(_address)]
Day = Annotated[date, BeforeValidator(_day)]
LanguageTexts = Annotated[
    dict[str, Annotated[str, BeforeValidator(_language_text)]], BeforeValidator(_per_language)
]
LanguagePhrases = Annotated[
    dict[str, Annotated[str, BeforeValidator(_language_text), AfterValidator(_phrase)]],
    BeforeValidator(_per_language),
]
FeedUrls = Annotated[dict[str, Annotated[str, BeforeValidator(_feed_url)]], BeforeValidator(_feeds)]
TimeZone = Annotated[str, BeforeValidator(_time_zone)]
Languages = Annotated[
    list[Annotated[str, BeforeValidator(_language_code)]],
    _non_empty_list("language codes, like [en, be]"),
    AfterValidator(_unique),
]


# --- files --------------------------------------------------------------------------------------


class _File(BaseModel):
    """A mapping read from YAML: unknown keys are mistakes (a typo would silently drop a field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Sender(_File):
    """``from:`` in newsletter.yaml: one address, a display name per language."""

    address: Address
    name: LanguagePhrases


class ProfileFile(_File):
    """``newsletter.yaml``: the newsletter's names, sender, site and languages."""

    name: LanguagePhrases
    sender: Sender = Field(alias="from")
    site: Url
    languages: Languages
    default_language: Text
    about: LanguageTexts
    reply_to: Address | None = None
    publisher: OneLine | None = None  # postal address / publisher line of every footer
    # The website's feed per language (RSS 2.0, Atom or JSON Feed): editions start from them
    # (worker/editions/feeds.py). Languages without a feed are allowed; others are refused.
    feeds: FeedUrls | None = None
    # The newsletter's own time zone (IANA): an edition's period is in days of this zone.
    timezone: TimeZone | None = None


class Image(_File):
    """A picture above an item; ``alt`` is required (WCAG 1.1.1). ``url`` is absolute, or a file
    of the edition folder that the web app serves (``NEWSLETTER_IMAGES_DIR``)."""

    url: ImageUrl
    # Checked even when absent (validate_default): blind readers and mail clients that block
    # images see only the alt text.
    alt: Annotated[str, BeforeValidator(_no_alt_text)] = Field(default=None, validate_default=True)
    credit: Text | None = None


class Item(_File):
    """One article: plain-text lead, Markdown body."""

    section: Text | None = None
    title: Text
    standfirst: Text | None = None
    url: Url
    image: Image | None = None
    lead: Text
    body: Text


class Absent(_File):
    """``- absent: true``: the language has no version of this article (it exists in another
    language only). It keeps the items of every language aligned by position and is left out of
    this language's rendition; nothing else may be written beside it."""

    absent: bool

    @model_validator(mode="before")
    @classmethod
    def _only_absent(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            others = [str(key) for key in value if key != "absent"]
            if others:
                raise _rule(
                    "a placeholder 'absent: true' has no other fields (found: "
                    f"{', '.join(others)}); write the article, or keep only 'absent: true'"
                )
            if value.get("absent") is not True:
                raise _rule(
                    f"'absent' must be true (got {kind(value.get('absent'))}); leave it out "
                    "for an article"
                )
        return value


ABSENT_TAG, ITEM_TAG = "absent", "item"


def _item_kind(value: Any) -> str:
    """Which shape an entry of ``items`` is: a placeholder when it has an ``absent`` key."""
    return ABSENT_TAG if isinstance(value, Mapping) and "absent" in value else ITEM_TAG


ItemOrAbsent = Annotated[
    Annotated[Item, Tag(ITEM_TAG)] | Annotated[Absent, Tag(ABSENT_TAG)], Discriminator(_item_kind)
]


class Period(_File):
    """The days an edition covers, both included."""

    start: Day
    end: Day

    @field_validator("end")
    @classmethod
    def _not_before_start(cls, end: date, info: ValidationInfo) -> date:
        start = info.data.get("start")  # absent when start itself was invalid
        if start is not None and end < start:
            raise _rule(f"period ends ({end}) before it starts ({start})")
        return end


class ContentFile(_File):
    """``<language>.yaml``: one language of one edition.

    Validate with ``context={"language": "be"}`` (the file's language) to check ``language``.
    """

    edition: Annotated[str, BeforeValidator(_text), AfterValidator(_edition_key)]
    language: Text
    period: Period
    subject: OneLine
    preheader: OneLine
    items: Annotated[list[ItemOrAbsent], _non_empty_list("items")]

    @field_validator("items")
    @classmethod
    def _not_all_absent(cls, items: list[Item | Absent]) -> list[Item | Absent]:
        if all(isinstance(item, Absent) for item in items):
            raise _rule("every item is 'absent: true': a language needs at least one article")
        return items

    @field_validator("language")
    @classmethod
    def _matches_file(cls, declared: str, info: ValidationInfo) -> str:
        expected = (info.context or {}).get("language")
        if expected is not None and declared != expected:
            raise _rule(f"says '{declared}' but the file is for '{expected}'")
        return declared


# --- errors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One schema error: ``path`` like ``items[0].image.alt`` (``""`` for the whole file).

    ``absent`` is true when the field is missing, so its line is the parent mapping's.
    """

    path: str
    reason: str
    absent: bool = False


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("items", 0, "url")`` -> ``"items[0].url"``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def field_errors(error: ValidationError, model: type[BaseModel]) -> list[FieldError]:
    """The errors of validating ``model``, worded for an editor, in pydantic's order."""
    return [_field_error(detail, model) for detail in error.errors()]


def _untagged(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """``loc`` without the union's tag: ``("items", 0, "item", "url")`` ->
    ``("items", 0, "url")``."""
    tagged = len(loc) > 2 and loc[0] == "items" and isinstance(loc[1], int)
    if tagged and loc[2] in (ITEM_TAG, ABSENT_TAG):
        return loc[:2] + loc[3:]
    return loc


def _field_error(detail: ErrorDetails, model: type[BaseModel]) -> FieldError:
    loc, error_type = _untagged(detail["loc"]), detail["type"]
    path = field_path(loc)
    # A mapping written with nothing after it (`period:`) is YAML null: as missing as no key.
    no_mapping = error_type == "model_type" and detail["input"] is None and bool(loc)
    if error_type in ("missing", NO_VALUE) or no_mapping:
        return FieldError(path, f"missing field '{loc[-1]}'", absent=True)
    # invalid_key: a key that is not text (`1:` in YAML).
    if error_type in ("extra_forbidden", "invalid_key"):
        parent, key = field_path(loc[:-1]), str(loc[-1])
        known = listing(_keys_at(model, loc[:-1]))
        path = f"{parent}.{key}" if parent else key
        return FieldError(path, f"unknown key '{key}' (expected one of: {known})")
    if error_type == "model_type":
        return FieldError(path, f"expected a mapping of keys, got {kind(detail['input'])}")
    return FieldError(path, detail["msg"])


def _keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the mapping at ``loc`` inside ``model`` may have (aliases where set)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, str):
            field = next(
                (f for name, f in current.model_fields.items() if (f.alias or name) == part), None
            )
            current = None if field is None else _model_in(field.annotation)
    if current is None:
        return []
    return [field.alias or name for name, field in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``Image | None``, ``list[Item]``, ``Annotated[...]``, or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


_LANGUAGES: TypeAdapter[list[str]] = TypeAdapter(Languages)


def valid_languages(value: Any) -> tuple[str, ...]:
    """``value`` (the raw ``languages`` list) as a tuple when valid, else ``()``.

    Lets the per-language checks run while other fields of the profile have errors; the list's
    own errors come from :class:`ProfileFile`.
    """
    try:
        return tuple(_LANGUAGES.validate_python(value))
    except ValidationError:
        return ()
