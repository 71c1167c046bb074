"""The desk's door: accounts, logins, sessions, CSRF, roles, the action log, the CLI."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any

import pytest
from click.testing import CliRunner
from fastapi import Depends, Form
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update

from tests.desk_kit import add_user, csrf_of, login
from worker.desk import accounts, audit
from worker.models import DeskAccount, DeskAction, DeskSession
from worker.runtime import Runtime
from worker.web.app import create_app
from worker.web.desk.access import DeskUser, csrf, editor

PASSWORD = "correct horse battery"


def client_of(rt: Runtime) -> TestClient:
    return TestClient(create_app(rt), client=("198.51.100.7", 40000))


def with_settings(rt: Runtime, **changes: Any) -> Runtime:
    """Another runtime on the same database and Redis with ``changes`` to the settings."""
    return Runtime(replace(rt.settings, **changes), clock=rt.clock)


def actions(rt: Runtime) -> list[tuple[str, str, str]]:
    with rt.session() as session:
        rows = session.scalars(select(DeskAction).order_by(DeskAction.id))
        return [(r.user_name, r.action, r.subject) for r in rows]


def live_sessions(rt: Runtime, name: str) -> int:
    with rt.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(DeskSession)
                .join(DeskAccount, DeskAccount.id == DeskSession.user_id)
                .where(DeskAccount.name == name, DeskSession.revoked_at.is_(None))
            )
            or 0
        )


def test_login_then_home_then_logout_revokes_the_session(rt: Runtime) -> None:
    # Given an editor
    add_user(rt, "ales", PASSWORD, "editor", "Ales@Example.org")
    client = client_of(rt)
    # When they log in
    login(client, "ales", PASSWORD)
    home = client.get("/desk/")
    # Then the home page shows their name and role, the "New edition" link, the headers
    assert home.status_code == 200
    assert "ales (editor)" in home.text and 'href="/desk/editions/new"' in home.text
    assert "default-src 'none'" in home.headers["content-security-policy"]
    assert home.headers["cache-control"] == "no-store"
    with rt.session() as session:
        user = session.scalars(select(DeskAccount)).one()
        assert user.password_hash.startswith("$argon2id$")
        assert user.address == "Ales@example.org"  # sealed in the row, opened here
        stored = session.execute(text("SELECT address FROM desk_user")).scalar_one()
        assert "example.org" not in stored
        token_hash = session.scalars(select(DeskSession.token_hash)).one()
    cookie = client.cookies.get("desk")
    assert cookie and accounts.token_hash(cookie) == token_hash and cookie not in token_hash
    # When they log out (POST with the token)
    reply = client.post("/desk/logout", data={"csrf": csrf_of(home.text)}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/desk/login"
    # Then the session is revoked: the old cookie opens nothing any more
    assert live_sessions(rt, "ales") == 0
    again = TestClient(create_app(rt))
    again.cookies.set("desk", cookie, path="/desk")
    assert again.get("/desk/", follow_redirects=False).status_code == 303
    assert [a[1] for a in actions(rt)] == ["login", "logout"]


def test_wrong_password_is_refused_and_recorded_without_the_password(rt: Runtime) -> None:
    add_user(rt, "ales", PASSWORD)
    client = client_of(rt)
    form = client.get("/desk/login")
    reply = client.post(
        "/desk/login",
        data={"name": "ales", "password": "wrong password!", "csrf": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert reply.status_code == 401
    assert "Wrong name or password." in reply.text
    assert "desk" not in client.cookies
    # an address typed as the name is not kept either
    client.post(
        "/desk/login",
        data={"name": "reader@example.org", "password": "x" * 12, "csrf": csrf_of(form.text)},
    )
    assert actions(rt) == [("ales", "login.failed", ""), ("<address>", "login.failed", "")]
    with rt.session() as session:
        assert session.scalars(select(DeskAction.detail)).all() == [None, None]


def test_login_limit_per_account_refuses_even_the_right_password(rt: Runtime) -> None:
    rt = with_settings(rt, desk_login_failures_per_account=3)
    add_user(rt, "ales", PASSWORD)
    client = client_of(rt)
    token = csrf_of(client.get("/desk/login").text)
    for _ in range(3):
        reply = client.post(
            "/desk/login", data={"name": "ales", "password": "nope" * 3, "csrf": token}
        )
        assert reply.status_code == 401
    reply = client.post(
        "/desk/login",
        data={"name": "ales", "password": PASSWORD, "csrf": token},
        follow_redirects=False,
    )
    assert reply.status_code == 429
    assert 1 <= int(reply.headers["retry-after"]) <= 900
    assert "Too many failed logins" in reply.text
    assert live_sessions(rt, "ales") == 0
    assert actions(rt)[-1] == ("ales", "login.limited", "")


def test_login_limit_per_peer_counts_across_names(rt: Runtime) -> None:
    rt = with_settings(rt, desk_login_failures_per_peer=2)
    add_user(rt, "ales", PASSWORD)
    client = client_of(rt)
    token = csrf_of(client.get("/desk/login").text)
    for name in ("a1", "a2"):
        client.post("/desk/login", data={"name": name, "password": "nope" * 3, "csrf": token})
    reply = client.post("/desk/login", data={"name": "ales", "password": PASSWORD, "csrf": token})
    assert reply.status_code == 429
    # another peer is not held back
    other = TestClient(create_app(rt), client=("203.0.113.9", 1))
    login(other, "ales", PASSWORD)


def test_login_form_without_its_token_is_refused(rt: Runtime) -> None:
    add_user(rt, "ales", PASSWORD)
    client = client_of(rt)
    client.get("/desk/login")
    for token in ("", "forged-token-forged-token"):
        reply = client.post(
            "/desk/login", data={"name": "ales", "password": PASSWORD, "csrf": token}
        )
        assert reply.status_code == 403
    assert live_sessions(rt, "ales") == 0 and actions(rt) == []


def test_expired_session_goes_back_to_the_login_page(rt: Runtime) -> None:
    add_user(rt, "ales", PASSWORD)
    client = client_of(rt)
    login(client)
    assert client.get("/desk/log").status_code == 200
    with rt.session() as session:
        session.execute(
            update(DeskSession).values(expires_at=rt.clock.now() - timedelta(seconds=1))
        )
    reply = client.get("/desk/log?user=ales", follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/desk/login?next=/desk/log%3Fuser%3Dales"
    # a POST with an expired session is refused, not redirected
    assert client.post("/desk/logout", data={"csrf": "x"}).status_code == 401


def test_idle_expiry_moves_on_but_never_past_the_absolute_lifetime(rt: Runtime) -> None:
    policy = accounts.SessionPolicy(idle=timedelta(minutes=60), lifetime=timedelta(hours=2))
    now = rt.clock.now()
    with rt.session() as session:
        user = accounts.add_user(session, "ales", "editor", PASSWORD, None, now)
        opened = accounts.open_session(session, user, now, policy)
    assert opened.expires_at == now + timedelta(minutes=60)
    with rt.session() as session:
        live = accounts.live_session(session, opened.token, now + timedelta(minutes=50), policy)
        assert live and live[0].expires_at == now + timedelta(minutes=110)
    with rt.session() as session:
        live = accounts.live_session(session, opened.token, now + timedelta(minutes=100), policy)
        assert live and live[0].expires_at == now + timedelta(hours=2)
    with rt.session() as session:
        assert (
            accounts.live_session(session, opened.token, now + timedelta(hours=2), policy) is None
        )


def test_post_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(
    rt: Runtime,
) -> None:
    add_user(rt, "olga", PASSWORD, "operator")
    add_user(rt, "ales", PASSWORD, "editor")
    ales = client_of(rt)
    login(ales, "ales", PASSWORD)
    olga = client_of(rt)
    login(olga, "olga", PASSWORD)
    before = actions(rt)
    for data in ({}, {"csrf": ""}, {"csrf": "0" * 43}):
        reply = olga.post("/desk/users/ales/end-sessions", data=data)
        assert reply.status_code == 403
        assert "did not come from the desk" in reply.text
        assert olga.post("/desk/logout", data=data).status_code == 403
    assert live_sessions(rt, "ales") == 1 and live_sessions(rt, "olga") == 1
    assert actions(rt) == before
    # with the token it is done, and recorded
    token = csrf_of(olga.get("/desk/users").text)
    reply = olga.post("/desk/users/ales/end-sessions", data={"csrf": token}, follow_redirects=False)
    assert reply.status_code == 303
    assert live_sessions(rt, "ales") == 0
    assert actions(rt)[-1] == ("olga", "user.sessions_ended", "ales")
    assert ales.get("/desk/", follow_redirects=False).status_code == 303


def test_an_editor_gets_403_on_an_operator_page_and_action(rt: Runtime) -> None:
    add_user(rt, "olga", PASSWORD, "operator")
    add_user(rt, "ales", PASSWORD, "editor")
    client = client_of(rt)
    login(client, "ales", PASSWORD)
    page = client.get("/desk/users")
    assert page.status_code == 403
    assert "Only operators may do this" in page.text
    assert 'href="/desk/users"' not in client.get("/desk/").text  # not offered either
    token = csrf_of(client.get("/desk/log").text)
    reply = client.post("/desk/users/olga/end-sessions", data={"csrf": token})
    assert reply.status_code == 403
    assert actions(rt) == [("ales", "login", "")]
    # an operator sees the page; no address on it
    operator = client_of(rt)
    login(operator, "olga", PASSWORD)
    users = operator.get("/desk/users")
    assert users.status_code == 200 and "ales" in users.text and "example.org" not in users.text


def test_the_log_page_filters_by_user_and_action(rt: Runtime) -> None:
    add_user(rt, "ales", PASSWORD)
    with rt.session() as session:
        audit.record(session, "olga", "edition.save", "2026-W49", {"language": "be"})
        audit.record(session, "ales", "send.schedule", "2026-W49", {"to": "x@example.org"})
    client = client_of(rt)
    login(client)
    assert client.get("/desk/log").text.count("2026-W49") == 2
    mine = client.get("/desk/log", params={"user": "olga"}).text
    assert "edition.save" in mine and "send.schedule</td>" not in mine
    by_action = client.get("/desk/log", params={"action": "send.schedule"}).text
    assert "to: &lt;address&gt;" in by_action and "x@example.org" not in by_action
    assert client.get("/desk/log", params={"user": "u" * 65}).status_code == 422


def test_language_switch_and_login_page_in_belarusian(rt: Runtime) -> None:
    client = client_of(rt)
    page = client.get("/desk/login?lang=be")
    assert '<html lang="be">' in page.text and "Увайсці" in page.text
    assert client.cookies.get("desk-lang") == "be"
    assert "Войти" in client.get("/desk/login?lang=ru").text


@pytest.mark.parametrize(
    "path",
    [
        "/desk/login?next=https://evil.example/",
        "/desk/login?next=%00%ff",
        "/desk/log?action=%00",
        "/desk",
    ],
)
def test_bad_input_never_gives_a_500(rt: Runtime, path: str) -> None:
    assert client_of(rt).get(path).status_code < 500


def test_login_next_goes_only_to_the_desk(rt: Runtime) -> None:
    add_user(rt, "ales", PASSWORD)
    client = client_of(rt)
    token = csrf_of(client.get("/desk/login").text)
    for target, expected in (("https://evil.example/", "/desk/"), ("/desk/log", "/desk/log")):
        reply = client.post(
            "/desk/login",
            data={"name": "ales", "password": PASSWORD, "csrf": token, "next": target},
            follow_redirects=False,
        )
        assert reply.headers["location"] == expected
        client.cookies.clear()
        token = csrf_of(client.get("/desk/login").text)


def test_cli_users_add_list_reset_remove(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.cli import main

    s = rt.settings
    for key, value in {
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "SECRET_KEY": s.secret_key,
        "DATA_KEY": s.data_key,
        "NEWSLETTER_PATH": s.newsletter_path,
    }.items():
        monkeypatch.setenv(f"NEWSLETTER_{key}", value)
    runner = CliRunner()
    added = runner.invoke(
        main,
        ["users", "add", "ales", "--role", "editor", "--address", "ales@example.org"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert added.exit_code == 0, added.output
    assert "desk user ales added (editor)" in added.output
    assert (
        runner.invoke(
            main, ["users", "add", "olga", "--role", "operator", "--password-stdin"], input=PASSWORD
        ).exit_code
        == 0
    )
    short = runner.invoke(
        main, ["users", "add", "x", "--role", "editor", "--password-stdin"], input="short"
    )
    assert short.exit_code == 1 and "password: 10 to 1024 characters" in short.output
    taken = runner.invoke(
        main, ["users", "add", "ales", "--role", "editor", "--password-stdin"], input=PASSWORD
    )
    assert "exists already" in taken.output
    listed = runner.invoke(main, ["users", "list"]).output
    assert listed.splitlines() == [
        "ales\teditor\tlast login never",
        "olga\toperator\tlast login never",
    ]
    assert "ales@example.org" in runner.invoke(main, ["users", "list", "--addresses"]).output

    # Given ales logged in twice
    first, second = client_of(rt), client_of(rt)
    login(first)
    login(second)
    assert "last login 20" in runner.invoke(main, ["users", "list"]).output
    # When reset: both sessions end, the old password fails, the new one works
    reset = runner.invoke(
        main, ["users", "reset", "ales", "--password-stdin"], input="a new long password\n"
    )
    assert reset.exit_code == 0 and "2 session(s) ended" in reset.output
    assert first.get("/desk/", follow_redirects=False).status_code == 303
    login(first, "ales", "a new long password")
    # When removed: the session ends, the log keeps the name
    removed = runner.invoke(main, ["users", "remove", "ales"])
    assert removed.exit_code == 0 and "1 session(s) ended" in removed.output
    assert first.get("/desk/", follow_redirects=False).status_code == 303
    assert runner.invoke(main, ["users", "remove", "ales"]).exit_code == 1
    assert ("cli", "user.remove", "ales") in actions(rt)
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(DeskSession)) == 0


def test_bad_input_of_a_logged_in_user_or_a_guesser_never_gives_a_500(rt: Runtime) -> None:
    add_user(rt, "olga", PASSWORD, "operator")
    guesser = client_of(rt)
    token = csrf_of(guesser.get("/desk/login").text)
    form = "application/x-www-form-urlencoded"
    for name in ("ol%00ga", "%ff%fe", "x" * 2000, ""):
        reply = guesser.post(
            "/desk/login",
            content=f"name={name}&password=p%00ssword%ff&csrf={token}".encode(),
            headers={"content-type": form},
        )
        assert reply.status_code in (401, 422), (name, reply.status_code)
    client = client_of(rt)
    login(client, "olga", PASSWORD)
    token = csrf_of(client.get("/desk/").text)
    for path in ("/desk/log?user=%00&action=%00", "/desk/log?action=%ff%fe", "/desk/users"):
        assert client.get(path).status_code == 200, path
    for name in ("%00", "%ff", "no-such-user"):
        reply = client.post(f"/desk/users/{name}/end-sessions", data={"csrf": token})
        assert reply.status_code == 404
    reply = client.post(
        "/desk/logout", content=b"\xff\x00--", headers={"content-type": "multipart/form-data"}
    )
    assert reply.status_code in (400, 403)
    assert live_sessions(rt, "olga") == 1


def test_csrf_dependency_and_form_fields_of_the_route_share_one_body(rt: Runtime) -> None:
    """The other desk routes declare Form fields next to ``Depends(csrf)``: both read the
    same body."""

    from fastapi import Depends

    app = create_app(rt)

    @app.post("/desk/echo", dependencies=[Depends(csrf)])
    def echo(user: Annotated[DeskUser, Depends(editor)], text: Annotated[str, Form()]) -> str:
        return f"{user.name}:{text}"

    add_user(rt, "ales", PASSWORD)
    client = TestClient(app)
    login(client)
    token = csrf_of(client.get("/desk/").text)
    assert client.post("/desk/echo", data={"csrf": token, "text": "hi"}).json() == "ales:hi"
    assert client.post("/desk/echo", data={"csrf": "no", "text": "hi"}).status_code == 403
    assert client.post("/desk/echo", data={"text": "hi"}).status_code == 403
