"""Message headers and bodies built by ``worker.sending.mime``: the handed cases in
tests/cases/headers,
header injection, and bodies that parse back unchanged with Python's ``email`` package."""

from __future__ import annotations

import email
import email.policy
import email.utils
import itertools
import json
import re
from datetime import UTC, datetime
from email.header import Header, decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mjml import mjml2html

from tests.samples import CASES
from worker.sending.mime import (
    HeaderInjection,
    _is_plain,
    build_template,
    encode_unstructured,
    personalise,
)

HEADER_CASES = CASES / "headers"
ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
DATE = datetime(2024, 7, 8, 6, 30, tzinfo=UTC)
SHORT_UNSUBSCRIBE = ["https://news.example.org/u/t0k", "mailto:u+t0k@news.example.org"]


def case(case_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entry in cases.json, the case file's content)."""
    entries = json.loads((HEADER_CASES / "cases.json").read_text(encoding="utf-8"))
    entry = next(e for e in entries if e["id"] == case_id)
    return entry, json.loads((HEADER_CASES / entry["file"]).read_text(encoding="utf-8"))


H01, H01_DATA = case("h01")
H02, H02_DATA = case("h02")
H03, H03_DATA = case("h03")


def build(**overrides: Any) -> bytes:
    """One message through ``build_template`` + ``personalise``, with overridable values."""
    template_args: dict[str, Any] = {
        "subject": "Weekly news",
        "from_name": "Example News",
        "from_address": "news@news.example.org",
        "html": "<p>Hello</p>",
        "text": "Hello",
        "language": "en",
        "list_id": "weekly.news.example.org",
        "list_id_name": "Weekly news",
    }
    personal_args: dict[str, Any] = {
        "to": "reader@example.org",
        "message_id": "<d1.2024-W28@news.example.org>",
        "date": DATE,
        "list_unsubscribe": SHORT_UNSUBSCRIBE,
        "substitutions": {},
    }
    template_only = {*template_args, "extra_headers", "reply_to", "feedback_id"}
    for key, value in overrides.items():
        (template_args if key in template_only else personal_args)[key] = value
    return personalise(build_template(**template_args), **personal_args)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def raw_fields(data: bytes) -> dict[str, list[str]]:
    """Each header field's physical lines as sent (name included), keyed by lower-case name."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    fields: dict[str, list[str]] = {}
    current: list[str] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            current.append(line)
        else:
            current = [line]
            fields[line.split(":", 1)[0].lower()] = current
    return fields


def assert_encoded_words_well_formed(lines: list[str]) -> None:
    """RFC 2047: each encoded-word at most 75 characters, holding whole UTF-8 characters (§5),
    separated from its neighbours by whitespace (§5(1), §6.2)."""
    joined = "\r\n".join(lines)
    for match in ENCODED_WORD.finditer(joined):
        assert len(match.group(0)) <= 75, match.group(0)
        before, after = joined[match.start() - 1], joined[match.end() : match.end() + 1]
        assert before in (" ", "\t", "\n"), f"no whitespace before {match.group(0)}"
        assert after in ("", " ", "\t", "\r"), f"no whitespace after {match.group(0)}"
        ((raw, charset),) = decode_header(match.group(0))
        assert isinstance(raw, bytes) and charset is not None
        raw.decode(charset)  # a character split across two encoded-words raises here


# --- h01: Cyrillic subjects with one-letter words ----------------------------------------------


@pytest.mark.parametrize("subject", H01_DATA["values"], ids=lambda s: s[:24])
def test_h01_cyrillic_subject_round_trips(subject: str) -> None:
    expected = H01["expected"]["for_each_value"]
    data = build(subject=subject, from_name="Рэдакцыя «Навіны тыдня»", language="be")
    lines = raw_fields(data)[H01_DATA["header"].lower()]

    assert expected["decoded_subject_equals_input"]
    assert parse(data)["Subject"] == subject
    assert max(len(line.encode()) for line in lines) <= expected["every_physical_line_max_octets"]
    assert len(lines) > 1 or len(subject) < 40  # the long one is folded: the case's point
    assert expected["no_adjacent_encoded_words_without_whitespace"]
    assert not re.search(r"\?==\?", "".join(lines))
    assert_encoded_words_well_formed(lines)


SUBJECTS_OF_THE_SAME_KIND = [
    "ў " * 60,
    "Навіны: " + "ы" * 90 + " і з",
    "Mixed ASCII and Кірыліца, ў і з в, emoji 📰 and more text " * 3,
    "A" * 120,  # one ASCII word longer than a line: cannot be folded at whitespace
    "Weekly: " + "x" * 90 + " end",
    "  leading and trailing spaces  ",
    "=?utf-8?q?looks_encoded?= but is literal text",
    "Tab\tseparated",
    "Plain ASCII subject that is long enough to need folding at the spaces between words ok",
]


@pytest.mark.parametrize("subject", SUBJECTS_OF_THE_SAME_KIND, ids=str)
def test_any_subject_parses_back_unchanged_on_short_lines(subject: str) -> None:
    data = build(subject=subject)
    lines = raw_fields(data)["subject"]
    assert parse(data)["Subject"] == subject
    assert max(len(line.encode()) for line in lines) <= 78
    assert_encoded_words_well_formed(lines)


# --- h02: a long List-Unsubscribe ---------------------------------------------------------------


def test_h02_long_list_unsubscribe_stays_plain_and_folds_between_uris() -> None:
    expected = H02["expected"]
    value = H02_DATA["headers"]["List-Unsubscribe"]
    uris = re.findall(r"<([^>]+)>", value)
    assert len(uris) == 2 and uris[0].startswith("https://")
    data = build(list_unsubscribe=uris)
    lines = raw_fields(data)["list-unsubscribe"]
    raw = "\r\n".join(lines)

    assert expected["raw_header_contains_encoded_word"] is False
    assert "=?" not in raw and raw.isascii()
    assert expected["fold_points_only_between_uris"]
    for first, second in itertools.pairwise(lines):
        assert first.endswith(">,") and second.startswith(" <"), (first, second)
    assert expected["unfolded_value_equals_input"]
    assert raw.replace("\r\n", "") == f"List-Unsubscribe: {value}"  # RFC 5322 §2.2.3 unfolding
    assert str(parse(data)["List-Unsubscribe"]) == value
    assert max(len(line.encode()) for line in lines) <= expected["physical_line_max_octets"]
    assert max(len(line) for line in data.split(b"\r\n")) <= 998

    https = [
        uri
        for uri in re.findall(r"<([^>]+)>", str(parse(data)["List-Unsubscribe"]))
        if uri.startswith("https://")
    ]
    assert https[0] == expected["one_click_target"]  # RFC 8058 §3.1: POST goes to the https URI
    post = raw_fields(data)["list-unsubscribe-post"]
    assert post == [f"List-Unsubscribe-Post: {expected['list_unsubscribe_post_header']}"]
    assert parse(data)["List-Unsubscribe-Post"] == expected["list_unsubscribe_post_header"]


def test_list_unsubscribe_refuses_uris_that_would_need_encoding_or_quoting() -> None:
    for uri in [
        "https://news.example.org/u/a b",
        "https://пример.рф/u/x",
        "https://x.org/u/>",
        "https://x.org/u/a,b",
        "",
    ]:
        with pytest.raises(HeaderInjection):
            build(list_unsubscribe=[uri])


def test_confirmation_mail_has_no_list_unsubscribe() -> None:
    fields = raw_fields(build(list_unsubscribe=[]))
    assert "list-unsubscribe" not in fields and "list-unsubscribe-post" not in fields


# --- h03: display names with a comma --------------------------------------------------------------


@pytest.mark.parametrize("mailbox", H03_DATA["addresses"], ids=lambda a: a["display_name"][:12])
def test_h03_display_name_with_comma_is_one_mailbox(mailbox: dict[str, str]) -> None:
    expected = H03["expected"]["for_each_address"]
    data = build(from_name=mailbox["display_name"], from_address=mailbox["addr_spec"])
    assert_one_mailbox(data, mailbox["display_name"], mailbox["addr_spec"])
    assert expected == {
        "parsed_mailbox_count": 1,
        "display_name_roundtrip_equal": True,
        "addr_spec_roundtrip_equal": True,
    }


def assert_one_mailbox(data: bytes, display_name: str, addr_spec: str) -> None:
    lines = raw_fields(data)["from"]
    addresses = parse(data)["From"].addresses
    assert len(addresses) == 1
    assert addresses[0].display_name == display_name
    assert addresses[0].addr_spec == addr_spec
    # a parser that does not decode encoded-words first (compat32) also sees one mailbox, and an
    # RFC 2047 §6.2 decoder reads the same name
    raw_value = "".join(lines).split(":", 1)[1]
    ((phrase, addr),) = email.utils.getaddresses([raw_value])
    assert addr == addr_spec
    assert str(make_header(decode_header(phrase))) == display_name
    # a display name is one encoded-word (see worker.sending.mime._phrase): short ones fit RFC
    # 2047's
    # 75 characters and RFC 5322's 78-octet lines
    if len(display_name.encode()) <= 45:
        assert max(len(line.encode()) for line in lines) <= 78
        assert_encoded_words_well_formed(lines)
    assert max(len(line.encode()) for line in lines) <= 998


DISPLAY_NAMES_OF_THE_SAME_KIND = [
    'The "Weekly" News; <Edition> @ Example, Inc.',
    "Back\\slash, Ltd.",
    "Рэдакцыя штотыднёвых навін, «Навіны тыдня», Мінск, Беларусь, рэдакцыя і карэспандэнты",
    "Редакция, ООО «Пример»",
    "=?utf-8?q?looks_encoded?=, Inc.",
    "Ёлка (Ёлачка), ў",
]


@pytest.mark.parametrize("name", DISPLAY_NAMES_OF_THE_SAME_KIND, ids=str)
def test_any_display_name_is_one_mailbox(name: str) -> None:
    assert_one_mailbox(build(from_name=name), name, "news@news.example.org")


CHARACTERS = list("abcXYZ019 ,.;:\"'()<>@\\=?_-ўіёЁщЪ€📰\t«»")  # specials, Cyrillic, astral
HEADER_TEXT = st.text(st.sampled_from(CHARACTERS), min_size=1)


@settings(max_examples=200, deadline=None)
@given(HEADER_TEXT.filter(lambda s: len(s) <= 200))
def test_property_any_subject_round_trips(subject: str) -> None:
    data = build(subject=subject)
    lines = raw_fields(data)["subject"]
    assert parse(data)["Subject"] == subject
    assert max(len(line.encode()) for line in lines) <= 78
    assert_encoded_words_well_formed(lines)


@settings(max_examples=200, deadline=None)
@given(HEADER_TEXT.filter(lambda s: len(s) <= 40))
def test_property_any_display_name_is_one_mailbox(name: str) -> None:
    assume(name.strip())
    (address,) = parse(build(from_name=name))["From"].addresses
    assert address.display_name == " ".join(name.split())  # whitespace runs become one space
    assert address.addr_spec == "news@news.example.org"


def test_list_id_with_comma_and_cyrillic_description() -> None:
    for name in ["Example News, Inc.", "Навіны тыдня, Мінск"]:
        data = build(list_id_name=name)
        lines = raw_fields(data)["list-id"]
        assert max(len(line.encode()) for line in lines) <= 78
        raw_value = "".join(lines).split(":", 1)[1]
        ((phrase, list_id),) = email.utils.getaddresses([raw_value])
        assert list_id == "weekly.news.example.org"
        assert str(make_header(decode_header(phrase))) == name
        assert str(parse(data)["List-Id"]).endswith(" <weekly.news.example.org>")


# --- header injection ----------------------------------------------------------------------


INJECTIONS = [
    "x\r\nBcc: victim@example.org",
    "x\nBcc: victim@example.org",
    "x\rBcc: v@example.org",
    "x\x00y",
]


@pytest.mark.parametrize("bad", INJECTIONS, ids=["crlf", "lf", "cr", "nul"])
@pytest.mark.parametrize(
    "field",
    [
        "subject",
        "from_name",
        "from_address",
        "to",
        "message_id",
        "language",
        "reply_to",
        "list_id_name",
        "extra_value",
        "personal_value",
        "unsubscribe_uri",
    ],
)
def test_cr_lf_in_any_header_value_raises_header_injection(field: str, bad: str) -> None:
    by_field: dict[str, dict[str, Any]] = {
        "extra_value": {"extra_headers": {"X-Edition": bad}},
        "personal_value": {"headers": {"X-Delivery": bad}},
        "unsubscribe_uri": {"list_unsubscribe": [f"https://news.example.org/u/{bad}"]},
    }
    overrides = by_field.get(field, {field: bad})
    with pytest.raises(HeaderInjection):
        build(**overrides)


@pytest.mark.parametrize(
    "name", ["Bcc: x", "X Edition", "", "X-Édition", "X-A\r\nBcc", "X-Edition\n", "X-\x7f", ":"]
)
def test_bad_header_names_raise_header_injection(name: str) -> None:
    with pytest.raises(HeaderInjection):
        build(extra_headers={name: "1"})
    with pytest.raises(HeaderInjection):
        build(headers={name: "1"})


def test_addresses_that_are_not_one_mailbox_raise_header_injection() -> None:
    for address in ["a@example.org, b@example.org", "a@ex.org <b@ex.org>", "a @example.org"]:
        with pytest.raises(HeaderInjection):
            build(to=address)
        with pytest.raises(HeaderInjection):
            build(from_address=address)


# --- bodies --------------------------------------------------------------------------------


LONG_LINE = (
    "<td style=\"font-family:Arial\">Навіны &amp; падзеі ў Мінску — «цытата» 'x' &lt;b&gt; "
    "%%UNSUBSCRIBE_URL%%</td>"
) * 420


def mjml_html() -> str:
    html = mjml2html(
        "<mjml><mj-body><mj-section><mj-column>"
        '<mj-text>Навіны тыдня: падзеі ў Мінску &amp; «Гродне» &lt;2024&gt; "quoted"</mj-text>'
        '<mj-button href="%%UNSUBSCRIBE_URL%%">Адпісацца</mj-button>'
        "</mj-column></mj-section></mj-body></mjml>"
    )
    return html + "\n" + LONG_LINE + "\n"


def test_bodies_parse_back_into_text_and_html_parts_unchanged() -> None:
    html = mjml_html()
    text = (
        "Навіны тыдня ў Мінску & <Гродне> \"quoted\" 'single'\n"
        "Trailing spaces   \n.leading dot\nFrom the start\n\n"
        + "ы" * 40_000
        + "\nАдпісацца: %%UNSUBSCRIBE_URL%%\n"
    )
    assert max(len(line) for line in html.splitlines()) > 40_000
    url = "https://news.example.org/u/abc.DEF-123"
    data = build(html=html, text=text, substitutions={"%%UNSUBSCRIBE_URL%%": url})

    message = parse(data)
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable"] * 2
    # line ends are CRLF on the wire (RFC 2045 §6.7 canonical form); the email package keeps them
    assert parts[0].get_content().replace("\r\n", "\n") == text.replace("%%UNSUBSCRIBE_URL%%", url)
    assert parts[1].get_content().replace("\r\n", "\n") == html.replace("%%UNSUBSCRIBE_URL%%", url)
    assert "%%" not in parts[1].get_content()
    assert max(len(line) for line in data.split(b"\r\n")) <= 78  # RFC 5322 §2.1.1, RFC 2045 §6.7
    assert data.isascii()  # 7bit on the wire: no 8BITMIME needed
    assert not message.defects and not any(p.defects for p in parts)


def test_html_substitutions_can_differ_from_text_ones() -> None:
    data = build(
        html="<a href='%%U%%'>x</a>",
        text="%%U%%",
        substitutions={"%%U%%": "https://x.org/u/a&b"},
        html_substitutions={"%%U%%": "https://x.org/u/a&amp;b"},
    )
    text_part, html_part = parse(data).iter_parts()
    assert text_part.get_content() == "https://x.org/u/a&b"
    assert html_part.get_content() == "<a href='https://x.org/u/a&amp;b'>x</a>"


def test_each_message_has_the_required_headers() -> None:
    data = build(
        from_name="Навіны тыдня",
        subject="Навіны",
        language="be",
        feedback_id="a:b:c:news",
        reply_to="editor@news.example.org",
    )
    message = parse(data)
    assert message["Message-ID"] == "<d1.2024-W28@news.example.org>"
    assert email.utils.parsedate_to_datetime(message["Date"]) == DATE
    assert message["From"].addresses[0].display_name == "Навіны тыдня"
    assert message["To"] == "reader@example.org"
    assert message["MIME-Version"] == "1.0"
    assert message["Content-Language"] == "be"
    assert message["List-Id"] == "Weekly news <weekly.news.example.org>"
    assert message["Feedback-ID"] == "a:b:c:news"
    assert message["Reply-To"] == "editor@news.example.org"
    assert message["List-Unsubscribe"] == ", ".join(f"<{u}>" for u in SHORT_UNSUBSCRIBE)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
        assert len(message.get_all(name) or []) == 1, name


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.just("\t")))
def test_a_plain_one_line_header_is_written_as_the_email_package_folds_it(value: str) -> None:
    # encode_unstructured writes a plain value that fits one line as it is (issue 16: per
    # message, X-Newsletter-Delivery); the email package's Header, used before, gives the same
    name = "X-Newsletter-Delivery"
    assume(_is_plain(name, value) and len(name) + 2 + len(value) <= 78)
    expected = Header(value, "us-ascii", header_name=name).encode(linesep="\r\n")
    assert encode_unstructured(name, value) == f"{name}: {expected}"
