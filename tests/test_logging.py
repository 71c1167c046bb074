"""Structured logs: JSON with the bound ids, secrets removed, addresses masked at every level."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tests.services import DATA_KEY_ENV
from worker.logs import configure_logging, log_context, mask_address
from worker.settings import Settings

SECRET = "s3cret-key-that-must-not-leak"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    settings = Settings.from_env(
        DATA_KEY_ENV,
        secret_key=SECRET,
        log_json=True,
        smtp_url="smtps://mailer:relay-pass-99@smtp.example.net",
    )
    configure_logging(settings, out, level=logging.DEBUG)
    yield out
    root.handlers[:], root.level = saved


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_ids_and_never_secrets_or_full_addresses(stream: io.StringIO) -> None:
    log = logging.getLogger("worker.sending.batch")
    with log_context(send_id=7):
        log.info(
            "refused %s by %s",
            "Anna.K@example.org",
            "smtps://mailer:relay-pass-99@smtp.example.net",
        )
        log.warning("key %s", SECRET, extra={"delivery_id": 42})
        log.debug("debug masks %s and %s", "anna@example.org", "boris@Gmail.com")
    log.info("outside")
    first, second, third, fourth = lines(stream)
    assert (
        first["send_id"] == 7
        and first["level"] == "info"
        and first["logger"] == "worker.sending.batch"
    )
    assert first["message"] == "refused A***@<other> by smtps://mailer:***@smtp.example.net"
    assert second == {**second, "send_id": 7, "delivery_id": 42, "message": "key ***"}
    assert third["message"] == "debug masks a***@<other> and b***@Gmail.com"  # every level
    assert "send_id" not in fourth
    assert SECRET not in stream.getvalue() and "relay-pass-99" not in stream.getvalue()


def test_exceptions_are_cleaned_too(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad address olga@example.com")
    except ValueError:
        logging.getLogger("worker").exception("failed")
    (entry,) = lines(stream)
    exception = str(entry["exception"])
    assert "o***@<other>" in exception
    assert "olga@" not in exception and "example.com" not in exception


def test_mask_address_keeps_only_a_major_providers_domain() -> None:
    """A reader on a personal domain is named by the domain: only the major providers' domains
    (the dashboard's provider buckets) and the newsletter's own are kept."""
    assert mask_address("to <ivan@пример.бел>, x@y.org") == "to <i***@<other>>, x***@<other>"
    assert mask_address("vasil@gmail.com, Olga@Yandex.BY, p@pm.me") == (
        "v***@gmail.com, O***@Yandex.BY, p***@pm.me"
    )
    assert mask_address("vasil@kowalski.by") == "v***@<other>"
    assert mask_address("unsubscribe+x@news.example.org", frozenset({"news.example.org"})) == (
        "u***@news.example.org"
    )
    masked = mask_address("a@kowalski.by, b@gmail.com")
    assert mask_address(masked) == masked  # masking twice changes nothing
    assert mask_address("version 1.2@3 and user@localhost") == "version 1.2@3 and user@localhost"
