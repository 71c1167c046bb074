"""``worker.sending.smtp.quote_periods`` is smtplib's dot-stuffing (RFC 5321 §4.5.2), byte for
byte."""

from __future__ import annotations

import smtplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.sending.smtp import quote_periods

TRICKY = [
    b"",
    b".",
    b"..",
    b".\r\n",
    b".leading dot on the first line\r\nnext\r\n",
    b"a\r\n.\r\nb\r\n",  # a lone dot line would end DATA early
    b"a\r\n..\r\n...x\r\n",
    b"a\n.b\n..c\n",  # bare LF lines: smtplib stuffs them too
    b"a\r.b\r\n",  # a bare CR is not a line end for either
    b"\r\n.\r\n.\r\n.",
    b"x.\r\n.y.\r\n",
]


def smtplib_quote(data: bytes) -> bytes:
    return bytes(smtplib._quote_periods(data))  # type: ignore[attr-defined]


@pytest.mark.parametrize("data", TRICKY)
def test_tricky_inputs_are_stuffed_exactly_like_smtplib(data: bytes) -> None:
    assert quote_periods(data) == smtplib_quote(data)


def test_a_dot_line_is_doubled() -> None:
    assert quote_periods(b".a\r\n.\r\nb") == b"..a\r\n..\r\nb"


@given(st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"\r", b"a", b".."]), max_size=30))
def test_generated_inputs_match_smtplib(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert quote_periods(data) == smtplib_quote(data)
