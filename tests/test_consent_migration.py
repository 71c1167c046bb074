"""Migration 0007: consent rows written before the evidence rule keep only the network and the
program's family (worker/subscriptions/evidence.py), cut in place."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import text

from worker.db import make_engine

MIGRATION = Path(__file__).resolve().parent.parent / "migrations/versions/0007_consent_networks.py"
FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
THUNDERBIRD = "Mozilla/5.0 (Windows NT 10.0; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"
# (ip, user_agent, confirm_ip, confirm_user_agent) as stored → as kept
ROWS = [
    (
        ("203.0.113.57", FIREFOX, "2001:db8:85a3:17:8a2e:370:7334:1", THUNDERBIRD),
        ("203.0.113.0/24", "Firefox", "2001:db8:85a3::/48", "Thunderbird"),
    ),
    (  # an IPv4-mapped IPv6 address counts as IPv4; a proxy's "unknown" is not kept
        ("::ffff:198.51.100.23", "curl/8.5.0", "unknown", None),
        ("198.51.100.0/24", "curl", None, None),
    ),
    (  # written after the rule: left as it is
        ("192.0.2.0/24", "Chrome Mobile", "2001:db8:1::/48", "Other"),
        ("192.0.2.0/24", "Chrome Mobile", "2001:db8:1::/48", "Other"),
    ),
    ((None, None, None, None), (None, None, None, None)),
]
COLUMNS = ("ip", "user_agent", "confirm_ip", "confirm_user_agent")


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0007", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_upgrade(url: str) -> None:
    """0007's ``upgrade()`` on ``url`` as Alembic runs it (its own transaction, ``op`` bound)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            # the transaction Alembic opens around one migration (per migration on SQLite,
            # whose DDL is not transactional: what autocommit_block then commits)
            per_migration = not context.impl.transactional_ddl
            with (
                Operations.context(context),
                context.begin_transaction(_per_migration=per_migration),
            ):
                _migration().upgrade()
            conn.commit()
    finally:
        engine.dispose()


def _consents(url: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(text(f"SELECT {', '.join(COLUMNS)} FROM consent ORDER BY id"))
            ]
    finally:
        engine.dispose()


def test_0007_cuts_old_consent_rows_to_the_network_and_family(db_url: str) -> None:
    # Given consent rows written before the evidence rule (full IPs, raw user agents), one
    # written after it, and one with nothing
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO newsletter (id, slug, default_language, profile, created_at) "
            "VALUES (1, 'weekly', 'en', '{}', '2024-01-01 00:00:00')"
        )
        conn.execute(
            text(
                "INSERT INTO subscriber (id, newsletter_id, email, email_key, domain, language, "
                "status, created_at, updated_at) VALUES (1, 1, 'enc1:x', 'k', 'other', 'en', "
                "'confirmed', '2024-01-01', '2024-01-01')"
            )
        )
        for n, (stored, _) in enumerate(ROWS, 1):
            conn.execute(
                text(
                    "INSERT INTO consent (id, subscriber_id, event_id, signed_up_at, language, "
                    "method, ip, user_agent, confirm_ip, confirm_user_agent) VALUES (:id, 1, "
                    ":event, '2024-01-01', 'en', 'double_opt_in', :ip, :ua, :cip, :cua)"
                ),
                dict(
                    zip(
                        ("id", "event", "ip", "ua", "cip", "cua"),
                        (n, f"e{n}", *stored),
                        strict=True,
                    )
                ),
            )
    engine.dispose()
    # When the migration runs (twice: the second finds nothing left to cut)
    _run_upgrade(db_url)
    once = _consents(db_url)
    _run_upgrade(db_url)
    # Then every row keeps the network and the family only, the same rule as new signups
    assert once == [kept for _, kept in ROWS]
    assert _consents(db_url) == once


def test_0007_follows_0006() -> None:
    module = _migration()
    assert (module.revision, module.down_revision) == ("0007", "0006")
