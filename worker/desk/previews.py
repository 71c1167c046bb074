"""What readers will see of a stored edition, per language: the real rendition (HTML and text
part, rendered by :func:`worker.editions.rendering.render_edition` exactly as a send renders it),
the line an inbox list shows, and the HTML's size against Gmail's clipping.

Gmail clips a message whose HTML is over 102 KB ("[Message clipped]", the rest, unsubscribe link
included, behind a link); the size that counts is the HTML part as transferred, i.e. after its
content transfer encoding (the project sends it quoted-printable: :func:`worker.sending.mime.
quoted_printable`). The desk warns from :data:`WARN_BYTES` (100 KB), before the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.editions.rendering import GMAIL_CLIP_BYTES, TemplateProblem, render_edition
from worker.editions.store import edition_contents, profile_of
from worker.models import Edition, Newsletter
from worker.sending.mime import quoted_printable

WARN_BYTES = 100 * 1024
"""The desk warns from this size of the encoded HTML: personalisation (links per reader) adds a
little to every copy."""

# Characters of subject and preheader an inbox list shows on one line: Gmail's web list at a
# common 1280 px width shows about 100 in all, its phone app about 40 of the preheader under the
# subject. Approximate by nature (proportional fonts): the preview shows where the cut falls.
# What the text part's preview shows in place of each reader's own links (filled per reader at
# send time): a link of the same shape, which no reader owns.
SAMPLE_LINKS = {UNSUBSCRIBE_URL: "/u/sample-reader", PREFERENCES_URL: "/p/sample-reader"}


def with_sample_links(text: str, public_url: str) -> str:
    """``text`` with the per-reader placeholders (``%%UNSUBSCRIBE_URL%%``,
    ``%%PREFERENCES_URL%%``) replaced by sample links under ``public_url``
    (:data:`SAMPLE_LINKS`), as a reader's copy shows real ones."""
    base = public_url.rstrip("/")
    for placeholder, path in SAMPLE_LINKS.items():
        text = text.replace(placeholder, base + path)
    return text


DESKTOP_LINE = 100
PHONE_SUBJECT = 40
PHONE_PREHEADER = 45


def cut(text: str, length: int) -> str:
    """``text`` cut to ``length`` characters, with "…" when it was longer (at a word boundary
    when one is near)."""
    if len(text) <= length:
        return text
    head = text[: length - 1]
    space = head.rfind(" ")
    if space > length * 2 // 3:
        head = head[:space]
    return head.rstrip() + "…"


@dataclass(frozen=True)
class InboxLine:
    """How a mail shows in an inbox list: the sender's name, and subject and preheader as far as
    the list shows them on a desktop (one line) and on a phone (two short lines)."""

    sender: str
    subject: str
    preheader: str
    desktop: str  # "subject – preheader", cut
    phone_subject: str
    phone_preheader: str


def inbox_line(sender: str, subject: str, preheader: str) -> InboxLine:
    """The inbox line of a mail from ``sender`` (see :class:`InboxLine`)."""
    room = max(DESKTOP_LINE - len(subject) - 3, 0)
    desktop = cut(subject, DESKTOP_LINE)
    if room > 0 and preheader:
        desktop = f"{subject} – {cut(preheader, room)}"
    return InboxLine(
        sender,
        subject,
        preheader,
        desktop,
        cut(subject, PHONE_SUBJECT),
        cut(preheader, PHONE_PREHEADER),
    )


@dataclass(frozen=True)
class Preview:
    """One language of an edition as readers get it. ``html``/``text`` keep the unsubscribe
    placeholder (filled per reader at send time); ``html_bytes`` is the UTF-8 size,
    ``encoded_bytes`` the size after quoted-printable encoding (what Gmail counts); ``error``:
    why it does not render (the other fields are then empty)."""

    language: str
    subject: str
    preheader: str
    html: str
    text: str
    inbox: InboxLine
    html_bytes: int
    encoded_bytes: int
    warnings: tuple[str, ...] = ()
    error: str | None = None
    sample_text: str = ""  # ``text`` with sample links for the placeholders (with_sample_links)

    @property
    def near_clipping(self) -> bool:
        """Over :data:`WARN_BYTES`: Gmail may clip it once personalised."""
        return self.encoded_bytes > WARN_BYTES

    @property
    def clipped(self) -> bool:
        """Over Gmail's 102 KB: Gmail clips it."""
        return self.encoded_bytes > GMAIL_CLIP_BYTES

    @property
    def percent_of_limit(self) -> int:
        return round(100 * self.encoded_bytes / GMAIL_CLIP_BYTES)


def previews(
    session: Session, edition: Edition, public_url: str, only: str | None = None
) -> dict[str, Preview]:
    """Every language of the stored ``edition`` (or ``only`` that one, when it has it) rendered
    as a send would render it, in the newsletter's language order. A language that does not
    render has ``error`` set."""
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    profile = profile_of(newsletter)
    contents = edition_contents(session, edition)
    order = [language for language in profile.languages if language in contents]
    order += sorted(language for language in contents if language not in order)
    if only is not None:
        order = [language for language in order if language == only]
    out: dict[str, Preview] = {}
    for language in order:
        content = contents[language]
        sender = profile.from_name.get(language) or profile.from_address
        try:
            rendered = render_edition(profile, content, public_url=public_url)
        except TemplateProblem as error:
            line = inbox_line(sender, content.subject, content.preheader)
            out[language] = Preview(
                language, content.subject, content.preheader, "", "", line, 0, 0, (), str(error)
            )
            continue
        out[language] = Preview(
            language=language,
            subject=rendered.subject,
            preheader=rendered.preheader,
            html=rendered.html,
            text=rendered.text,
            inbox=inbox_line(sender, rendered.subject, rendered.preheader),
            html_bytes=len(rendered.html.encode("utf-8")),
            encoded_bytes=len(quoted_printable(rendered.html)),
            warnings=rendered.warnings,
            sample_text=with_sample_links(rendered.text, public_url),
        )
    return out
