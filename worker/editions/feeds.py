"""An edition started from the website's feeds: the articles already published in its period.

``newsletter.yaml`` names one feed per language (``feeds: {en: https://…/feed.json, …}``). Each
feed is fetched (:func:`fetch_feed`: http(s) only, public addresses only unless the operator
allows a host, a timeout, a size cap), parsed
(:func:`parse_feed`: RSS 2.0 and Atom with feedparser, JSON Feed 1.0/1.1 on our own) and its
items published within the edition's period (whole days in the newsletter's time zone) become the
edition's items in that language: title, link, lead (plain text), body (the article's HTML
cleaned by the rich-text allow-list, then written as Markdown, the edition files' format), image
with its credit, section (the first category). What the site repeats is taken out
(:func:`_cleaned`): a cut excerpt ("… Читать далее […]") gives way to the article's first
paragraph as the lead, the body's first paragraph is dropped when it repeats the lead, and the
item's own photo is dropped from the body (its caption becoming the credit when there is none).
The default period is the week that is ending (:func:`ending_week`).

Nothing is invented: an article published in one language only stays in that language (the
languages then have different numbers of items, which ``edition check`` and the desk show), an
image whose feed gives no description gets no alt text (``edition check`` asks the editor for
one), subject and preheader start as the first items' titles. One feed that fails (HTTP error,
timeout, not a feed) is reported by language and address and the other languages still get their
items. :func:`edition_from_feeds` returns the contents;
:func:`worker.editions.writing.write_edition` writes them as an ordinary edition folder.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo

import feedparser
import httpx
import nh3
from bs4 import BeautifulSoup, Tag
from markdownify import MarkdownConverter

from worker.editions.files import EditionContent, EditionImage, EditionItem, NewsletterProfile
from worker.editions.richtext import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, URL_SCHEMES
from worker.editions.schema import url_problem
from worker.safety import json_documents
from worker.safety.outbound import BlockedAddress, public_client

FETCH_TIMEOUT_SECONDS = 15.0  # per feed: connect, and each read
MAX_FEED_BYTES = 5 * 1024 * 1024  # a week of full-text articles is well under 1 MB
MAX_REDIRECTS = 5
USER_AGENT = "newsletter-worker (edition from feeds)"
JSON_FEED_VERSIONS = ("https://jsonfeed.org/version/1", "https://jsonfeed.org/version/1.1")
# Headings of an article: kept through cleaning (the rich-text rules demote them to h3/h4 when
# the Markdown is rendered); figures, divs and spans drop their tags and keep their text.
_FEED_TAGS = ALLOWED_TAGS | {"h1", "h2", "h5", "h6", "figure", "figcaption", "div", "b", "i"}
_BLOCKS = re.compile(r"</?(?:p|div|br|li|h[1-6]|blockquote|figcaption)\b[^>]*>", re.I)


class FetchProblem(ValueError):
    """A feed that could not be fetched; the message in English for logs and the CLI, ``code``
    and ``params`` (strings) for the desk's translations: ``http`` (status, url), ``too_large``
    (kb, url), ``timeout`` (seconds, url), ``redirects`` (count, url), ``unreachable`` (url,
    error), ``blocked`` (url, host, address, kind: :class:`worker.safety.outbound.BlockedAddress`),
    ``address`` (reason: an unusable address)."""

    def __init__(self, code: str, message: str, **params: str) -> None:
        self.code, self.params = code, params
        super().__init__(message)


class FeedProblem(ValueError):
    """One feed that gave no items: its language, its address and why, e.g.
    ``ru feed: HTTP 404 at https://example.org/ru/feed/``. ``code`` says what went wrong for the
    desk's translations (a :class:`FetchProblem` code, ``missing``, ``not_feed``, ``too_deep``),
    ``params`` its values."""

    def __init__(
        self,
        language: str,
        url: str,
        reason: str,
        code: str = "",
        params: Mapping[str, str] | None = None,
    ) -> None:
        self.language, self.url, self.reason = language, url, reason
        self.code = code
        self.params = {**(params or {}), "language": language, "url": url, "reason": reason}
        super().__init__(f"{language} feed: {reason}")


class NotAFeed(ValueError):
    """A document that is neither RSS, Atom nor JSON Feed."""


@dataclass(frozen=True)
class FeedItem:
    """One article of a feed. ``published`` is UTC (None when the feed gives no date); ``lead``
    is plain text, ``body`` Markdown; ``author`` (dc:creator, Atom author, JSON Feed authors) is
    kept for the desk but edition files have no byline field."""

    title: str
    link: str
    published: datetime | None
    lead: str
    body: str
    image: EditionImage | None = None
    section: str | None = None
    author: str | None = None


@dataclass(frozen=True)
class FeedEdition:
    """An edition's contents from the feeds, per language of the newsletter, and what went
    wrong: ``problems`` (one per feed that gave nothing, :class:`FeedProblem`) and ``notes``
    (items left out, languages that will need attention)."""

    contents: dict[str, EditionContent]
    problems: list[FeedProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Fetcher = Callable[[str], tuple[bytes, str]]  # url -> (body, Content-Type); raises ValueError


# --- fetching ------------------------------------------------------------------------------------


def fetch_feed(
    url: str,
    *,
    timeout: float = FETCH_TIMEOUT_SECONDS,
    max_bytes: int = MAX_FEED_BYTES,
    allow_hosts: Collection[str] = (),
) -> tuple[bytes, str]:
    """The body and ``Content-Type`` of ``url`` (http or https only, redirects followed up to
    :data:`MAX_REDIRECTS` times, each to http(s) only). Only public addresses are connected to,
    checked at every connection, redirects included, unless the host is in ``allow_hosts``
    (``NEWSLETTER_FEED_ALLOW_HOSTS``; :mod:`worker.safety.outbound`). Raises ``ValueError``
    worded for an editor: a bad address, ``HTTP 404 at …``, a timeout, a body over
    ``max_bytes`` bytes, a host that is not on the public internet (:class:`FetchProblem`)."""
    reason = url_problem(url)
    if reason:
        raise FetchProblem("address", reason, reason=reason)
    try:
        with (
            public_client(
                allow_hosts,
                follow_redirects=True,  # httpx follows http(s) only: no file:, no ftp:
                max_redirects=MAX_REDIRECTS,
                timeout=timeout,
                headers={"User-Agent": USER_AGENT},
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                status = str(response.status_code)
                raise FetchProblem("http", f"HTTP {status} at {url}", status=status, url=url)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    kb = str(max_bytes // 1024)
                    raise FetchProblem("too_large", f"larger than {kb} KB at {url}", kb=kb, url=url)
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type", "")
    except BlockedAddress as error:
        where = {"host": error.host, "address": error.address, "kind": error.kind}
        raise FetchProblem("blocked", f"{url}: {error}", url=url, **where) from None
    except httpx.TimeoutException:
        seconds = f"{timeout:g}"
        message = f"no answer within {seconds} s from {url}"
        raise FetchProblem("timeout", message, seconds=seconds, url=url) from None
    except httpx.TooManyRedirects:
        count = str(MAX_REDIRECTS)
        message = f"more than {count} redirects from {url}"
        raise FetchProblem("redirects", message, count=count, url=url) from None
    except httpx.HTTPError as error:
        message = f"cannot fetch {url}: {error}"
        raise FetchProblem("unreachable", message, url=url, error=str(error)) from None


def feed_fetcher(allow_hosts: Collection[str] = ()) -> Fetcher:
    """:func:`fetch_feed` allowing ``allow_hosts`` (host names or address literals, e.g.
    ``Settings.feed_hosts``), as a :data:`Fetcher` for :func:`edition_from_feeds`."""
    hosts = tuple(allow_hosts)

    def fetch(url: str) -> tuple[bytes, str]:
        return fetch_feed(url, allow_hosts=hosts)

    return fetch


# --- parsing -------------------------------------------------------------------------------------


def parse_feed(data: bytes, url: str, content_type: str = "") -> list[FeedItem]:
    """The items of the feed document ``data`` fetched from ``url`` (relative links resolve
    against it), in the feed's order. RSS 0.9x-2.0 and Atom through feedparser; JSON Feed 1.0
    and 1.1 (https://jsonfeed.org/version/1.1) here, because feedparser 6.0 does not read it.
    Raises :class:`NotAFeed`."""
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return _json_feed(data, url)
    parsed = feedparser.parse(
        io.BytesIO(data),
        response_headers={"content-location": url, "content-type": content_type or "text/xml"},
        # Relative links resolve against the article's own link (markdown_of), not the feed's.
        resolve_relative_uris=False,
    )
    if not parsed.get("version"):
        raise NotAFeed("not RSS/Atom/JSON Feed")
    return [_feedparser_item(entry, url) for entry in parsed.entries]


def _feedparser_item(entry: Mapping[str, Any], base: str) -> FeedItem:
    link = str(entry.get("link") or "")
    contents = entry.get("content") or []
    summary = str(entry.get("summary") or "")  # not summary_detail: media:description clobbers it
    body_html = str(contents[0].get("value") or "") if contents else summary
    if contents and summary == body_html:
        summary = ""  # feedparser copies an Atom entry's content into a missing summary
    when = entry.get("published_parsed") or entry.get("updated_parsed")
    tags = entry.get("tags") or []
    image = _feedparser_image(entry, body_html, link or base)
    lead, body_html, image = _cleaned(summary if contents else "", body_html, image, link or base)
    return FeedItem(
        title=plain(str(entry.get("title") or "")),
        link=link,
        published=datetime(*when[:6]).replace(tzinfo=UTC) if when else None,
        lead=lead,
        body=markdown_of(body_html, link or base),
        image=image,
        section=plain(str(tags[0].get("term") or "")) or None if tags else None,
        author=str(entry.get("author") or "") or None,
    )


def _feedparser_image(entry: Mapping[str, Any], body_html: str, base: str) -> EditionImage | None:
    """The item's picture: Media RSS ``media:content`` (or thumbnail), else an image enclosure;
    its credit from ``media:credit``; its alt text from the same picture inside the article."""
    candidates = [
        str(media.get("url") or "")
        for media in (entry.get("media_content") or [])
        if media.get("medium") == "image" or str(media.get("type", "")).startswith("image/")
    ]
    candidates += [str(media.get("url") or "") for media in entry.get("media_thumbnail") or []]
    candidates += [
        str(link.get("href") or "")
        for link in entry.get("links") or []
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/")
    ]
    url = next((urljoin(base, each) for each in candidates if each), "")
    if not url or url_problem(url):
        return None
    credits = entry.get("media_credit") or []
    credit = plain(str(credits[0].get("content") or "")) if credits else ""
    return EditionImage(url=url, alt=_alt_in(body_html, url, base), credit=credit or None)


def _json_feed(data: bytes, base: str) -> list[FeedItem]:
    try:
        document = json_documents.loads(data)
    except ValueError:
        raise NotAFeed("not RSS/Atom/JSON Feed (not valid JSON)") from None
    if not isinstance(document, dict) or not str(document.get("version", "")).startswith(
        JSON_FEED_VERSIONS[0]
    ):
        raise NotAFeed("not RSS/Atom/JSON Feed (JSON without a jsonfeed.org version)")
    items = document.get("items")
    if not isinstance(items, list):
        raise NotAFeed("JSON Feed without 'items'")
    home = document.get("home_page_url")
    if isinstance(home, str) and not url_problem(home):
        base = home  # the site's own address, not the feed's, for relative article links
    return [_json_item(item, base) for item in items if isinstance(item, dict)]


def _json_item(item: Mapping[str, Any], base: str) -> FeedItem:
    def text(key: str) -> str:
        value = item.get(key)
        return value if isinstance(value, str) else ""

    link = urljoin(base, text("url") or text("external_url"))
    paragraphs = [part.strip() for part in text("content_text").split("\n\n") if part.strip()]
    body_html = text("content_html") or "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    image_url = text("image") or text("banner_image")
    image = None
    if image_url and not url_problem(urljoin(link or base, image_url)):
        image_url = urljoin(link or base, image_url)
        # JSON Feed has no alt or credit field: a publisher extension `_image: {alt, credit}`.
        extension = item.get("_image")
        credit = extension.get("credit") if isinstance(extension, dict) else None
        alt = extension.get("alt") if isinstance(extension, dict) else None
        image = EditionImage(
            url=image_url,
            alt=plain(alt) if isinstance(alt, str) else _alt_in(body_html, image_url, link),
            credit=plain(credit) if isinstance(credit, str) and credit.strip() else None,
        )
    tags = item.get("tags")
    section = plain(tags[0]) if isinstance(tags, list) and tags and isinstance(tags[0], str) else ""
    authors = item.get("authors") or (
        [item["author"]] if isinstance(item.get("author"), dict) else []
    )
    names = [a["name"] for a in authors if isinstance(a, dict) and isinstance(a.get("name"), str)]
    lead, body_html, image = _cleaned(html.escape(text("summary")), body_html, image, link or base)
    return FeedItem(
        title=plain(text("title")),
        link=link,
        published=_json_date(text("date_published") or text("date_modified")),
        lead=lead,
        body=markdown_of(body_html, link or base),
        image=image,
        section=section or None,
        author=", ".join(names) or None,
    )


def _json_date(value: str) -> datetime | None:
    """An RFC 3339 date-time as UTC, or None when absent or unreadable."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


# --- text ----------------------------------------------------------------------------------------


def plain(fragment: str) -> str:
    """Plain text of an HTML ``fragment`` (tags dropped, entities decoded, whitespace collapsed
    into single spaces). Paragraph breaks become spaces: use for one-paragraph fields."""
    text = nh3.clean(_BLOCKS.sub(" ", fragment), tags=set(), clean_content_tags={"script", "style"})
    return " ".join(html.unescape(text).split())


_MORE = re.compile(r"\s*\[(?:…|\.\.\.)\]\s*$")  # WordPress's excerpt ends with "[…]"


def _lead(summary_html: str, body_html: str, link: str = "") -> str:
    """The lead: the feed's summary as plain text without WordPress's trailing ``[…]`` and
    "read more" link (a link to the article itself); the article's first paragraph when there is
    no summary."""
    if link:
        summary_html = re.sub(
            rf"""<a\b[^>]*href=["']{re.escape(html.escape(link))}["'][^>]*>.*?</a>""",
            "",
            summary_html,
            flags=re.I | re.S,
        )
    lead = plain(summary_html)
    if _MORE.search(lead):
        lead = _MORE.sub("", lead)
        lead = lead if lead.endswith((".", "!", "?", "…", "»", '"')) else f"{lead}…"
    if lead:
        return lead
    paragraphs = re.split(r"</?p\b[^>]*>|<br\s*/?>\s*<br\s*/?>|\n\s*\n", body_html, flags=re.I)
    return next((text for text in (plain(p) for p in paragraphs) if text), "")


# A summary that stops short: it ends with an ellipsis or WordPress's "[…]", or carries a
# "read more" link (WordPress's excerpt does both; its wording is the site language's).
_CUT_END = re.compile(r"(?:…|\.\.\.|\[(?:…|\.\.\.)\])\s*$")
_READ_MORE = re.compile(
    r"<a\b[^>]*>\s*(?:read more|continue reading|читать далее|читать дальше|чытаць далей)\b",
    re.I,
)


def is_cut(summary_html: str) -> bool:
    """Whether the feed's summary ``summary_html`` is cut short (ends with ``…``, ``...``,
    ``[…]`` or ``[...]``, or has a "Read more" / "Continue reading" / "Читать далее" / "Чытаць
    далей" link): such an excerpt stops mid-sentence and is no lead."""
    return bool(_READ_MORE.search(summary_html) or _CUT_END.search(plain(summary_html)))


def _same_text(fragment: str, text: str) -> bool:
    """Whether the HTML ``fragment`` says the plain ``text`` once tags, entities, whitespace and
    case are set aside."""
    return plain(fragment).casefold() == " ".join(text.split()).casefold() != ""


def _cleaned(
    summary_html: str, body_html: str, image: EditionImage | None, base: str
) -> tuple[str, str, EditionImage | None]:
    """The lead, the body's HTML and the image of an article, its repetitions removed:

    - the picture that is the item's ``image`` (same address once resolved against ``base``)
      is dropped from the body, with its ``figure`` and caption; the caption becomes the
      image's credit when the feed gives none;
    - a summary that :func:`is_cut` is not the lead: the body's first paragraph is (when the
      body has one; otherwise the summary without its "[…]" and link, as :func:`_lead`);
    - the body's first paragraph is dropped when it says what the lead says (as text, ignoring
      tags, entities, whitespace and case), unless it is all the body has.
    """
    tree = BeautifulSoup(body_html, "html.parser")
    if image is not None:
        caption = _drop_picture(tree, image.url, base)
        if caption and not image.credit:
            image = EditionImage(url=image.url, alt=image.alt, credit=caption)
    first = _first_paragraph(tree)
    if summary_html and is_cut(summary_html) and first is not None:
        summary_html = ""
    lead = _lead(summary_html, str(tree) if first is None else str(first), base)
    if first is not None and _same_text(str(first), lead):
        rest = [t for t in tree.find_all(string=True) if t.strip() and first not in t.parents]
        if rest:  # the body must keep something (an edition item's body is required)
            first.decompose()
    return lead, str(tree), image


_ASIDE = ("h1", "h2", "h3", "h4", "h5", "h6", "figure", "figcaption")


def _first_paragraph(tree: BeautifulSoup) -> Tag | None:
    """The article's first paragraph: its first ``p`` with text, unless text outside headings
    and figures comes before it (then None: the body is not written in paragraphs)."""
    for text in tree.find_all(string=True):
        if not text.strip() or any(parent.name in _ASIDE for parent in text.parents):
            continue
        paragraph = text.find_parent("p")
        return paragraph if paragraph is not None and plain(str(paragraph)) else None
    return None


def _drop_picture(tree: BeautifulSoup, url: str, base: str) -> str:
    """Remove from ``tree`` every ``img`` of ``url`` (with the ``figure`` around it, and a
    paragraph or link left empty); returns the first removed caption's text, or ``""``."""
    caption = ""
    for img in tree.find_all("img"):
        source = img.get("src")
        if not isinstance(source, str) or urljoin(base, source.strip()) != url:
            continue
        figure = img.find_parent("figure")
        if figure is not None:
            found = figure.find("figcaption")
            caption = caption or (plain(str(found)) if found is not None else "")
            figure.decompose()
            continue
        holder = img.parent
        img.decompose()
        while (
            holder is not None
            and holder.name in ("a", "p", "span", "div")
            and not plain(str(holder))
            and holder.find("img") is None
        ):
            parent = holder.parent
            holder.decompose()
            holder = parent
    return caption


def markdown_of(fragment: str, base: str) -> str:
    """The article HTML ``fragment`` as the Markdown of an edition body: first cleaned by nh3 to
    the rich-text allow-list (:mod:`worker.editions.richtext`: no script, no style, no event
    handlers, links only http/https/mailto, relative links resolved against ``base``), then
    converted by markdownify. Returns ``""`` for an empty article."""

    def absolute(tag: str, attribute: str, value: str) -> str | None:
        if attribute not in ("href", "src"):
            return value
        resolved = urljoin(base, value)
        return resolved if urlsplit(resolved).scheme in URL_SCHEMES else None

    cleaned = nh3.clean(
        fragment,
        tags=set(_FEED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        clean_content_tags={"script", "style"},
        attribute_filter=absolute,
        strip_comments=True,
        link_rel=None,
    )
    text = _Markdown(heading_style="ATX", bullets="-", escape_misc=False).convert(cleaned)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_LINE_MARKER = re.compile(r"^(\s*)([#>+-]|\d+[.)])(?=\s|$)", re.M)


class _Markdown(MarkdownConverter):
    """markdownify with the escaping an article's text needs to stay text: ``*``, ``_`` (its
    own), ``[``, ``]``, the backquote, and a ``#``, ``>``, ``-``, ``+`` or ``1.`` that starts a line
    (its ``escape_misc`` escapes ``&``, ``<``, ``.`` and more, which CommonMark without raw HTML
    does not need)."""

    def escape(self, text: str, parent_tags: Any) -> str:
        text = re.sub(r"([\\\[\]`])", r"\\\1", text or "")
        text = _LINE_MARKER.sub(lambda m: m.group(1) + "\\" + m.group(2), text)
        return str(super().escape(text, parent_tags))  # type: ignore[misc]  # untyped there


_IMG = re.compile(r"<img\b[^>]*>", re.I)
_ATTRIBUTE = re.compile(r"""\b(src|alt)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)


def _alt_in(body_html: str, url: str, base: str) -> str:
    """The alt text the article gives the picture ``url``, or ``""``."""
    for tag in _IMG.findall(body_html):
        found = {
            m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _ATTRIBUTE.finditer(tag)
        }
        if urljoin(base, html.unescape(found.get("src", ""))) == url:
            return plain(found.get("alt", ""))
    return ""


# --- the edition ---------------------------------------------------------------------------------


def period_bounds(start: date, end: date, zone: str) -> tuple[datetime, datetime]:
    """The UTC instants of ``start`` 00:00 and of the day after ``end`` 00:00 in ``zone``: an
    item belongs to the period when ``first <= published < after``."""
    tz = ZoneInfo(zone)
    first = datetime.combine(start, time(), tz).astimezone(UTC)
    after = datetime.combine(end + timedelta(days=1), time(), tz).astimezone(UTC)
    return first, after


def ending_week(today: date) -> tuple[date, date]:
    """Monday and Sunday of the week ``today`` is in: the period a weekly edition is made from
    while it is under way or just ended (its articles are published by then), sent the Monday
    after (:func:`sending_day`). On Thursday 2026-12-03: 2026-11-30 and 2026-12-06."""
    monday = today - timedelta(days=today.weekday())
    return monday, monday + timedelta(days=6)


def sending_day(end: date) -> date:
    """The Monday after a period ending on ``end``: the day the weekly edition of it goes out."""
    return end + timedelta(days=7 - end.weekday())


def default_key(start: date) -> str:
    """The edition key of a period starting on ``start``: its ISO week, e.g. ``2026-W49``."""
    year, week, _ = start.isocalendar()
    return f"{year}-W{week:02d}"


def edition_from_feeds(
    profile: NewsletterProfile,
    start: date,
    end: date,
    *,
    key: str | None = None,
    fetch: Fetcher = fetch_feed,
) -> FeedEdition:
    """The edition of ``start``..``end`` (days in ``profile.timezone``, both included) from the
    feeds of ``profile.feeds``: per language of the newsletter, the feed's items published in
    that period, oldest first. A language without a feed, or whose feed fails, gets no items and
    a :class:`FeedProblem`; the other languages are unaffected. ``key`` defaults to the ISO week
    of ``start``; ``fetch`` (url -> body, content type) is :func:`fetch_feed`.

    Raises ``ValueError`` when the newsletter names no feed at all or ``end`` is before ``start``.
    """
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    if not profile.feeds:
        raise ValueError("newsletter.yaml names no feeds (feeds: {en: https://…, …})")
    first, after = period_bounds(start, end, profile.timezone)
    result = FeedEdition(contents={})
    urls = {
        language: profile.feeds[language]
        for language in profile.languages
        if language in profile.feeds
    }
    # The feeds are fetched at once: a slow one costs its own timeout, not the sum of all.
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        pending = {
            language: pool.submit(_items_of, language, url, fetch) for language, url in urls.items()
        }
    for language in profile.languages:
        items: Sequence[FeedItem] = []
        if language not in pending:
            result.problems.append(
                FeedProblem(language, "", "no feed address in newsletter.yaml 'feeds'", "missing")
            )
        else:
            try:
                items = pending[language].result()
            except FeedProblem as problem:
                result.problems.append(problem)
        undated = [item for item in items if item.published is None]
        if undated:
            result.notes.append(f"{language} feed: {len(undated)} item(s) without a date left out")
        chosen = sorted(
            (i for i in items if i.published is not None and first <= i.published < after),
            key=lambda i: i.published or first,
        )
        result.contents[language] = _content(
            key or default_key(start), language, start, end, chosen
        )
    counts = {language: len(content.items) for language, content in result.contents.items()}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{n} {language}" for language, n in counts.items())
        result.notes.append(f"the languages have different numbers of items ({shown})")
    return result


def _items_of(language: str, url: str, fetch: Fetcher) -> list[FeedItem]:
    try:
        data, content_type = fetch(url)
    except FetchProblem as error:
        raise FeedProblem(language, url, str(error), error.code, error.params) from None
    except ValueError as error:  # a fetcher of the caller's
        raise FeedProblem(language, url, str(error)) from None
    try:
        return parse_feed(data, url, content_type)
    except NotAFeed as error:
        raise FeedProblem(language, url, f"{error} at {url}", "not_feed") from None
    except RecursionError:  # markdownify walks the article's HTML tree recursively
        reason = f"an article nested too deeply at {url}"
        raise FeedProblem(language, url, reason, "too_deep") from None


def _content(
    key: str, language: str, start: date, end: date, items: Sequence[FeedItem]
) -> EditionContent:
    edition_items = tuple(
        EditionItem(
            section=item.section,
            title=item.title,
            standfirst=None,
            url=item.link,
            image=item.image,
            lead=item.lead,
            body=item.body,
        )
        for item in items
    )
    titles = [item.title for item in items]
    return EditionContent(
        key=key,
        language=language,
        period_start=start,
        period_end=end,
        subject=titles[0] if titles else "",
        preheader=" · ".join(titles[1:3]) if len(titles) > 1 else (items[0].lead if items else ""),
        items=edition_items,
    )
