"""Helpers for desk tests: make a desk user, log a client in, read a form's CSRF token."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from worker.desk import accounts
from worker.runtime import Runtime

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def add_user(
    rt: Runtime,
    name: str = "ales",
    password: str = "correct horse battery",
    role: str = "editor",
    address: str | None = "ales@example.org",
) -> None:
    """Desk user ``name`` with ``role`` and ``password`` (committed)."""
    with rt.session() as session:
        accounts.add_user(session, name, role, password, address, rt.clock.now())


def csrf_of(html: str) -> str:
    """The first CSRF token in a page's forms; AssertionError if there is none."""
    match = _CSRF.search(html)
    assert match, "no csrf field in the page"
    return match.group(1)


def login(client: TestClient, name: str = "ales", password: str = "correct horse battery") -> None:
    """Log ``client`` in through the login form; it then holds the session cookie."""
    form = client.get("/desk/login")
    assert form.status_code == 200, form.text
    reply = client.post(
        "/desk/login",
        data={"name": name, "password": password, "csrf": csrf_of(form.text), "next": "/desk/"},
        follow_redirects=False,
    )
    assert reply.status_code == 303, reply.text
