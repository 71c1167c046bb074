"""Renditions: an edition or a transactional message rendered for one language.

Each message is a folder ``templates/<message>/`` with ``subject.txt.j2``, ``preheader.txt.j2``,
``body.mjml.j2`` and ``body.txt.j2``; the MJML bodies extend ``templates/base/layout.mjml.j2``,
the text bodies ``templates/base/layout.txt.j2``. Jinja2 (StrictUndefined, autoescape on for
MJML) fills the MJML, mjml-python turns it into HTML, and the text part comes from its own
template and the same data. Rendering is pure: no database, no network, no clock.

Per-recipient values are never rendered here: the HTML and text carry placeholders such as
:data:`UNSUBSCRIBE_URL` that the sender substitutes into the stored rendition.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup

from worker.editions.files import (
    EditionContent,
    EditionInvalid,
    EditionItem,
    EditionProblem,
    EditionSource,
    NewsletterProfile,
)
from worker.editions.includes import rebase_paths
from worker.editions.localisation import (
    TEMPLATE_ROOT,
    format_number,
    format_period,
    resolve_language,
    translations,
)
from worker.editions.mjml_documents import MjmlRefused, Problem, check_template_files, to_html
from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.editions.richtext import heading, markdown_to_html, markdown_to_text, tidy_text, wrap
from worker.editions.schema import is_local_image

__all__ = ["UNSUBSCRIBE_URL"]  # re-exported: rendering writes it, callers used to import it here

EDITION = "edition"
TRANSACTIONAL = ("confirmation", "welcome")
MESSAGES = (EDITION, *TRANSACTIONAL)
# Messages whose reader is subscribed and so must see an unsubscribe link (RFC 8058 adds the
# header; the visible link is what CAN-SPAM and GDPR practice expect).
NEEDS_UNSUBSCRIBE = frozenset({EDITION, "welcome"})
PARTS = ("subject.txt.j2", "preheader.txt.j2", "body.mjml.j2", "body.txt.j2")

GMAIL_CLIP_BYTES = 102 * 1024
"""Gmail shows "[Message clipped]" and hides the rest (including the unsubscribe link) above
about 102 KB of HTML."""
# Room for the substituted unsubscribe URL and tracking values that are not in the rendition yet.
_PERSONALISATION_ALLOWANCE = 512


class TemplateProblem(ValueError):
    """A template that cannot be rendered: Jinja syntax or undefined value, MJML parse error,
    an MJML validation problem or a refused ``mj-include``, a missing message part, or a missing
    unsubscribe placeholder. Raised at check/load time. ``problems`` lists the MJML problems
    (each with file, line, element and attribute) when those are the reason."""

    def __init__(self, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class RenderedMessage:
    """One rendition: what goes into the MIME parts of every copy in one language.

    ``html`` and ``text`` may contain placeholders (:data:`UNSUBSCRIBE_URL`); ``warnings`` are
    human-readable notes that do not stop a send (e.g. Gmail clipping).
    """

    subject: str
    preheader: str
    html: str
    text: str
    lang: str
    warnings: tuple[str, ...] = ()


def _autoescape(name: str | None) -> bool:
    # select_autoescape(["mjml"]) would NOT match "body.mjml.j2" (it looks at the last suffix),
    # so an editor's "<" would break MJML parsing: decide by the full name instead.
    return name is not None and name.endswith((".mjml.j2", ".mjml", ".html.j2", ".html"))


class _TemplateLoader(jinja2.FileSystemLoader):
    """Templates from ``templates/``; in MJML templates, ``mj-include`` paths are rebased on the
    template's own folder, so an include resolves relative to the file that writes it (as in
    reference MJML) even after Jinja has merged a child template into its layout."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".mjml.j2"):
            source = rebase_paths(source, template.rpartition("/")[0])
        return source, filename, uptodate


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


@cache
def environment(language: str) -> jinja2.Environment:
    """The Jinja2 environment for ``language``: templates from ``templates/``, that language's
    gettext catalogue, StrictUndefined, autoescape for MJML/HTML templates only."""
    env = jinja2.Environment(
        loader=_TemplateLoader(TEMPLATE_ROOT),
        autoescape=_autoescape,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    # Same whitespace rule as the extraction (templates/babel.cfg: trimmed = true).
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.filters["number"] = lambda value: format_number(value, language)
    env.filters["host"] = _host
    env.filters["wrap"] = wrap
    env.filters["heading"] = heading
    return env


def _render_part(env: jinja2.Environment, name: str, part: str, context: Mapping[str, Any]) -> str:
    where = f"{name}/{part}"
    try:
        return env.get_template(where).render(context)
    except jinja2.TemplateNotFound as error:
        raise TemplateProblem(f"{where}: template missing ({error.name})") from error
    except jinja2.TemplateSyntaxError as error:
        raise TemplateProblem(f"{error.name}:{error.lineno}: {error.message}") from error
    except jinja2.UndefinedError as error:
        raise TemplateProblem(f"{where} ({context.get('lang')}): {error.message}") from error


def _one_line(text: str) -> str:
    # Header values must not carry line breaks (RFC 5322 section 2.2); collapse all whitespace.
    return " ".join(text.split())


def _mjml_to_html(source: str, where: str) -> str:
    # The rendered document sits at the template root: its include paths were rebased there.
    try:
        return to_html(source, TEMPLATE_ROOT / "rendered.mjml", TEMPLATE_ROOT, name=where)
    except MjmlRefused as error:
        raise TemplateProblem(f"{where}: {error}", error.problems) from error


def _size_warnings(html: str) -> tuple[str, ...]:
    size = len(html.encode("utf-8")) + _PERSONALISATION_ALLOWANCE
    if size <= GMAIL_CLIP_BYTES:
        return ()
    return (
        f"HTML is {size / 1024:.0f} KB with personalisation; Gmail clips messages over "
        f"{GMAIL_CLIP_BYTES // 1024} KB and hides the rest, including the unsubscribe link",
    )


@dataclass(frozen=True)
class _Parts:
    subject: str
    preheader: str
    mjml: str
    text: str


def _render_parts(name: str, language: str, context: Mapping[str, Any]) -> _Parts:
    env = environment(language)
    full = {**context, "lang": language}
    subject = _one_line(_render_part(env, name, "subject.txt.j2", full))
    if not subject:
        raise TemplateProblem(f"{name}/subject.txt.j2 ({language}): empty subject")
    preheader = _one_line(_render_part(env, name, "preheader.txt.j2", full))
    full["subject"], full["preheader"] = subject, preheader
    mjml_source = _render_part(env, name, "body.mjml.j2", full)
    text = tidy_text(_render_part(env, name, "body.txt.j2", full))
    return _Parts(subject, preheader, mjml_source, text)


def _render(name: str, language: str, context: Mapping[str, Any]) -> RenderedMessage:
    parts = _render_parts(name, language, context)
    html = _mjml_to_html(parts.mjml, f"{name}/body.mjml.j2 ({language})")
    if name in NEEDS_UNSUBSCRIBE:
        for part, body in (("body.mjml.j2", html), ("body.txt.j2", parts.text)):
            if UNSUBSCRIBE_URL not in body:
                raise TemplateProblem(f"{name}/{part} ({language}): no unsubscribe link")
            if PREFERENCES_URL not in body:
                raise TemplateProblem(f"{name}/{part} ({language}): no preferences link")
    warnings = _size_warnings(html) + _publisher_warnings(context)
    return RenderedMessage(parts.subject, parts.preheader, html, parts.text, language, warnings)


def _publisher_warnings(context: Mapping[str, Any]) -> tuple[str, ...]:
    """A warning when the footer has no postal address / publisher line (``publisher`` in
    newsletter.yaml): CAN-SPAM (15 U.S.C. 7704(a)(5)) and some readers expect one."""
    newsletter = context.get("newsletter") or {}
    if newsletter.get("publisher"):
        return ()
    return (
        "newsletter.yaml has no 'publisher' (postal address / publisher line): "
        "the footer shows none",
    )


def _newsletter_context(
    profile: NewsletterProfile, language: str, public_url: str
) -> dict[str, Any]:
    return {
        "newsletter": {
            "name": profile.name[language],
            "about": profile.about[language],
            "site": profile.site,
            "publisher": profile.publisher or "",
        },
        "public_url": public_url.rstrip("/"),
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "preferences_url": PREFERENCES_URL,
    }


def image_url(public_url: str, key: str, url: str) -> str:
    """Where mail clients load an item's image: ``url`` itself when absolute, else the web app's
    copy of the edition folder's file (``{public_url}/images/{key}/{file}``, ``web/images.py``)."""
    if is_local_image(url):
        return f"{public_url.rstrip('/')}/images/{key}/{url}"
    return url


def _item_context(item: EditionItem, public_url: str, key: str) -> dict[str, Any]:
    image = item.image
    if image is not None:
        image = replace(image, url=image_url(public_url, key, image.url))
    return {
        "section": item.section,
        "title": item.title,
        "standfirst": item.standfirst,
        "url": item.url,
        "image": image,
        "lead": item.lead,
        # Safe by construction: markdown_to_html cleans with nh3 before we mark it.
        "body_html": Markup(markdown_to_html(item.body)),
        "body_text": markdown_to_text(item.body),
    }


def archive_url(public_url: str, key: str, language: str) -> str:
    """The public "view in browser" page of one edition in one language."""
    return f"{public_url.rstrip('/')}/archive/{key}/{language}"


def _edition_context(
    profile: NewsletterProfile, content: EditionContent, public_url: str
) -> dict[str, Any]:
    language = content.language
    context = _newsletter_context(profile, language, public_url)
    context["edition"] = {
        "key": content.key,
        "subject": content.subject,
        "preheader": content.preheader,
        "period": format_period(content.period_start, content.period_end, language),
        "period_start": content.period_start,
        "period_end": content.period_end,
        "items": [_item_context(item, public_url, content.key) for item in content.items],
    }
    context["archive_url"] = archive_url(public_url, content.key, language)
    return context


def render_edition(
    profile: NewsletterProfile, content: EditionContent, *, public_url: str
) -> RenderedMessage:
    """Render ``content`` (one language of an edition) into a rendition.

    ``public_url`` is the web app's base URL; the mail links to
    ``{public_url}/archive/{key}/{language}``. HTML and text each contain
    :data:`UNSUBSCRIBE_URL` as the visible unsubscribe link. Raises :class:`TemplateProblem`.
    About 3-4 ms per language once templates are compiled.
    """
    context = _edition_context(profile, content, public_url)
    return _render(EDITION, content.language, context)


def edition_mjml(profile: NewsletterProfile, content: EditionContent, *, public_url: str) -> str:
    """The MJML that :func:`render_edition` feeds to mjml-python (for linting and fidelity)."""
    context = _edition_context(profile, content, public_url)
    return _render_parts(EDITION, content.language, context).mjml


def render_message(
    name: str,
    language: str,
    context: Mapping[str, Any],
    *,
    profile: NewsletterProfile,
    public_url: str,
    fallbacks: Sequence[str] = (),
) -> RenderedMessage:
    """Render the transactional message ``name`` (see :data:`TRANSACTIONAL`) for a reader of
    ``language``.

    ``context`` holds the message's own values: ``confirmation`` needs ``confirm_url`` and
    ``expires_hours`` (and takes ``repermission``, true for a reader imported without consent
    evidence who is asked again: the re-permission wording); ``welcome`` and ``unsubscribed``
    need nothing. A language the newsletter does not offer falls back along ``fallbacks``, then
    to ``profile.default_language``.
    Raises :class:`TemplateProblem` for an unknown message or a missing value.
    """
    chosen, full = _message_context(name, language, context, profile, public_url, fallbacks)
    return _render(name, chosen, full)


def _message_context(
    name: str,
    language: str,
    context: Mapping[str, Any],
    profile: NewsletterProfile,
    public_url: str,
    fallbacks: Sequence[str],
) -> tuple[str, dict[str, Any]]:
    if name not in TRANSACTIONAL:
        raise TemplateProblem(f"unknown message {name!r}; known: {', '.join(TRANSACTIONAL)}")
    chosen = resolve_language(language, profile.languages, (*fallbacks, profile.default_language))
    return chosen, {**_newsletter_context(profile, chosen, public_url), **context}


def message_mjml(
    name: str,
    language: str,
    context: Mapping[str, Any],
    *,
    profile: NewsletterProfile,
    public_url: str,
    fallbacks: Sequence[str] = (),
) -> str:
    """The MJML that :func:`render_message` feeds to mjml-python (for linting and fidelity)."""
    chosen, full = _message_context(name, language, context, profile, public_url, fallbacks)
    return _render_parts(name, chosen, full).mjml


def template_version(name: str) -> tuple[tuple[str, int], ...]:
    """What changes when message ``name``'s template files change: the names and modification
    times (ns) of the files of ``templates/<name>/`` and ``templates/base/`` (layouts and what they
    include), so a cache of renditions keyed on it renders again after an edit. A missing
    folder counts as empty. A dozen ``stat`` calls: cheap next to one rendering (~10 ms)."""
    stamps: list[tuple[str, int]] = []
    for folder in (TEMPLATE_ROOT / name, TEMPLATE_ROOT / "base"):
        try:
            with os.scandir(folder) as entries:
                stamps.extend(sorted((entry.path, entry.stat().st_mtime_ns) for entry in entries))
        except OSError:
            stamps.append((str(folder), 0))
    return tuple(stamps)


def sample_context(name: str) -> dict[str, Any]:
    """Values that make message ``name`` renderable, for checks and previews."""
    if name == "confirmation":
        return {"confirm_url": "https://example.org/confirm/TOKEN", "expires_hours": 48}
    return {}


def check_templates(profile: NewsletterProfile, public_url: str = "https://example.org") -> None:
    """Check the MJML template files (lines of the files themselves, see
    :func:`worker.editions.mjml_documents.check_template_files`), then render every
    transactional message in every language of ``profile``.

    Raises :class:`TemplateProblem` listing every problem of the template files, else for the
    first message that fails.
    """
    problems = check_template_files(TEMPLATE_ROOT)
    if problems:
        listed = "\n".join(f"templates/{problem}" for problem in problems)
        raise TemplateProblem(f"{len(problems)} MJML problem(s):\n{listed}", tuple(problems))
    for name in TRANSACTIONAL:
        for language in profile.languages:
            render_message(
                name, language, sample_context(name), profile=profile, public_url=public_url
            )


def unsubscribe_count(rendered: RenderedMessage) -> tuple[int, int]:
    """How often :data:`UNSUBSCRIBE_URL` appears in (html, text)."""
    return rendered.html.count(UNSUBSCRIBE_URL), rendered.text.count(UNSUBSCRIBE_URL)


def messages_on_disk() -> tuple[str, ...]:
    """Message folders under ``templates/`` that hold all :data:`PARTS`."""
    return tuple(
        sorted(
            path.name
            for path in TEMPLATE_ROOT.iterdir()
            if path.is_dir() and all((path / part).is_file() for part in PARTS)
        )
    )


def html_lang(html: str) -> str | None:
    """The ``lang`` attribute of the ``<html>`` element, if any."""
    match = re.search(r"<html[^>]*\slang=\"([^\"]+)\"", html)
    return match.group(1) if match else None


def render_all(
    profile: NewsletterProfile, contents: Iterable[EditionContent], *, public_url: str
) -> dict[str, RenderedMessage]:
    """Render each content (language) of one edition; language -> rendition."""
    return {
        content.language: render_edition(profile, content, public_url=public_url)
        for content in contents
    }


def render_source(source: EditionSource, public_url: str) -> dict[str, RenderedMessage]:
    """Render every language of ``source`` and every transactional message.

    Raises :class:`EditionInvalid` with one problem per language that does not render.
    """
    problems: list[EditionProblem] = []
    renditions: dict[str, RenderedMessage] = {}
    try:
        check_templates(source.newsletter, public_url)
    except TemplateProblem as error:
        # One line per MJML problem, at its line in the template file (element, attribute, allowed).
        problems += [
            EditionProblem(f"templates/{p.file}", "", str(p).split(" ", 1)[1], p.line)
            for p in error.problems
        ] or [EditionProblem("newsletter.yaml", "", f"templates: {error}")]
    if any(problem.file.startswith("templates/") for problem in problems):
        raise EditionInvalid(problems)  # every language would repeat them
    for language, content in source.contents.items():
        try:
            renditions[language] = render_edition(source.newsletter, content, public_url=public_url)
        except TemplateProblem as error:
            problems.append(EditionProblem(f"{language}.yaml", "", f"does not render: {error}"))
    if problems:
        raise EditionInvalid(problems)
    return renditions
