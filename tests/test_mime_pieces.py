"""Bodies pre-encoded around their placeholders (``worker.sending.mime.EncodedBody``) decode to
exactly
what substituting first and encoding the whole body gives, on lines of at most 76 octets."""

from __future__ import annotations

import quopri

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.sending.mime import EncodedBody, _encode_body, quoted_printable, substitute

PLACEHOLDERS = ["%%UNSUBSCRIBE_URL%%", "%%TOKEN%%"]
text_piece = st.lists(
    st.sampled_from([*'ab yў\t=.\n%&<>"', "\r\n", "ы" * 30, "x" * 90]), max_size=40
).map("".join)
value = st.text(alphabet=st.sampled_from(list("abc/:.-_=?&%é ")), max_size=120)


def decoded(data: bytes) -> str:
    return quopri.decodestring(data.replace(b"\r\n", b"\n")).decode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(text_piece, st.sampled_from(PLACEHOLDERS)), max_size=8), value, value)
def test_pieces_decode_like_the_whole_body(parts: list[str], url: str, token: str) -> None:
    body = "".join(parts)
    subs = {"%%UNSUBSCRIBE_URL%%": url, "%%TOKEN%%": token}
    got = _encode_body(body, EncodedBody.of(body), subs)
    want = quoted_printable(substitute(body, subs))
    assert decoded(got) == decoded(want)
    assert max(len(line) for line in got.split(b"\r\n")) <= 76  # RFC 2045 §6.7 rule 5
    assert b"\n" not in got.replace(b"\r\n", b"")  # CRLF line ends only


def test_long_line_before_placeholder_is_split_outside_escapes() -> None:
    body = "ы" * 200 + "%%UNSUBSCRIBE_URL%%" + "=" * 100
    encoded = EncodedBody.of(body)
    assert encoded is not None and len(encoded.pieces) == 3
    got = encoded.fill({"%%UNSUBSCRIBE_URL%%": "https://news.example.org/u/abc"})
    assert decoded(got) == "ы" * 200 + "https://news.example.org/u/abc" + "=" * 100
    assert max(len(line) for line in got.split(b"\r\n")) <= 76


def test_stray_percent_signs_fall_back_to_whole_body_encoding() -> None:
    assert EncodedBody.of("100%% sure %%UNSUBSCRIBE_URL%%") is None
