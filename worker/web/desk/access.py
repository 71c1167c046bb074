"""Who may use the desk: login and logout, the session cookie, CSRF tokens, and the FastAPI
dependencies every desk route uses (``editor``, ``operator``, ``csrf``) with ``page``, which
renders a desk template.

The browser holds the session token in a cookie (``HttpOnly``, ``SameSite=Lax``, ``Path=/desk``;
``Secure`` and the ``__Secure-`` name prefix when ``NEWSLETTER_PUBLIC_URL`` is https —
``__Host-`` would demand ``Path=/``, and the desk's cookie has no business on the readers'
routes). Every POST carries the session's CSRF token in the form field ``csrf`` (the login form
a pre-session token, double-submitted in its own cookie). Failed logins are counted per peer
(IPv6 per /64) and per account name with the dashboard's counters
(:mod:`worker.operators.logins`, own key prefixes); over either limit every attempt is refused
with 429, right password or not. Logins, logouts and failed logins go to the action log
(:mod:`worker.desk.audit`).
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from worker.desk import accounts, audit
from worker.operators.logins import Logins, MemoryLogins, RedisLogins
from worker.runtime import Runtime
from worker.web.callers import client_ip, trusted_networks

LANGUAGES = ("en", "be", "ru")
LOGIN_PATH = "/desk/login"
_LOGIN_COOKIE_SECONDS = 3600
_MAX_FIELD = 1024


@dataclass(frozen=True)
class DeskUser:
    """The logged-in desk user, as the routes see them."""

    id: int
    name: str
    role: str  # "editor" | "operator"
    address: str | None  # the user's own mail address, for test sends (stored encrypted)


FORGED = "This form has expired or did not come from the desk. Reload it."


class DeskRefusal(Exception):
    """A desk request refused: answered with ``status_code`` and a page saying ``message`` (and a
    redirect to ``location`` when given). Installed in the app by ``worker.web.app``."""

    def __init__(self, status: int, message: str, location: str = "", retry_after: int = 0):
        super().__init__(message)
        self.status_code = status
        self.message = message
        self.location = location
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Found:
    user: DeskUser
    csrf: str


class DeskAccess:
    """The desk's login machinery on one runtime: session policy, cookies, failure counters."""

    def __init__(self, runtime: Runtime) -> None:
        s = runtime.settings
        self.runtime = runtime
        self.policy = accounts.SessionPolicy(
            idle=timedelta(minutes=s.desk_idle_minutes),
            lifetime=timedelta(hours=s.desk_session_hours),
        )
        self.secure = s.public_url.lower().startswith("https://")
        prefix = "__Secure-" if self.secure else ""
        self.cookie = f"{prefix}desk"
        self.login_cookie = f"{prefix}desk-login"
        self.trusted = trusted_networks(s.trusted_proxies)
        self.peers = _logins(runtime, s.desk_login_failures_per_peer, "peer")
        self.accounts = _logins(runtime, s.desk_login_failures_per_account, "account")

    def set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/desk",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    def forget_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(
            name, path="/desk", secure=self.secure, httponly=True, samesite="lax"
        )


def _logins(runtime: Runtime, limit: int, kind: str) -> Logins:
    prefix = f"newsletter:desk-login-failures:{kind}"
    key = runtime.settings.secret_key
    if runtime.redis is None:
        return MemoryLogins(limit, 0, key, prefix=prefix)
    return RedisLogins(runtime.redis, limit, 0, key, prefix=prefix)


_access_lock = threading.Lock()


def access_of(request: Request) -> DeskAccess:
    """The app's :class:`DeskAccess` (made on first use from ``app.state.runtime``)."""
    state = request.app.state
    with _access_lock:
        access = getattr(state, "desk_access", None)
        if access is None:
            access = state.desk_access = DeskAccess(state.runtime)
    assert isinstance(access, DeskAccess)
    return access


def _resolve(request: Request) -> _Found | None:
    """The live session of the request's cookie (once per request), or None."""
    if hasattr(request.state, "desk_found"):
        found: _Found | None = request.state.desk_found
        return found
    access = access_of(request)
    token = request.cookies.get(access.cookie, "")
    found = None
    if token:
        rt = access.runtime
        with rt.session() as session:
            live = accounts.live_session(session, token, rt.clock.now(), access.policy)
            if live is not None:
                row, user = live
                found = _Found(
                    DeskUser(user.id, user.name, user.role, user.address), row.csrf_token
                )
    request.state.desk_found = found
    return found


def editor(request: Request) -> DeskUser:
    """FastAPI dependency: any logged-in desk user. Without a live session a GET is redirected
    (303) to ``/desk/login?next=<the page>``; any other method gets 401."""
    found = _resolve(request)
    if found is None:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            lang = request.query_params.get("lang", "")
            also = f"&lang={lang}" if lang in LANGUAGES else ""
            location = f"{LOGIN_PATH}?next={quote(target)}{also}"
            raise DeskRefusal(303, "log in", location=location)
        raise DeskRefusal(401, "Your login has ended. Log in again.")
    return found.user


def operator(request: Request) -> DeskUser:
    """FastAPI dependency: operators only; an editor gets 403 and a page saying so."""
    user = editor(request)
    if user.role != accounts.Role.OPERATOR:
        raise DeskRefusal(403, "Only operators may do this.")
    return user


async def csrf(request: Request) -> None:
    """FastAPI dependency for every desk POST: the form field ``csrf`` must equal the session's
    token, else 403 (nothing is done). A POST without a live session gets 401."""
    try:
        form = await request.form()
    except Exception:  # a malformed body: the form parser's own errors vary by content type
        raise DeskRefusal(400, "The form could not be read.") from None
    given = form.get("csrf")
    found = await run_in_threadpool(_resolve, request)
    if found is None:
        raise DeskRefusal(401, "Your login has ended. Log in again.")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), found.csrf.encode()):
        raise DeskRefusal(403, FORGED)


def language(request: Request) -> str:
    """The desk's language: ``?lang=``, else the ``desk-lang`` cookie, else the first of the
    browser's ``Accept-Language`` the desk has, else English."""
    asked = request.query_params.get("lang") or request.cookies.get("desk-lang", "")
    if asked in LANGUAGES:
        return asked
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGUAGES:
            return tag
    return "en"


def page(
    request: Request, user: DeskUser | None, template: str, status: int = 200, **context: Any
) -> HTMLResponse:
    """Desk template ``template`` (``templates/desk/<template>``; a ``desk/`` prefix is
    optional) rendered in the desk's language with ``user``, ``csrf`` (the session's token),
    ``lang``, ``languages``, ``here`` (the path) and ``context``; ``Cache-Control: no-store``.
    A ``?lang=`` choice is remembered in the ``desk-lang`` cookie."""
    lang = language(request)
    name = template if template.startswith("desk/") else f"desk/{template}"
    found = _resolve(request) if user is not None else None
    context.setdefault("csrf", found.csrf if found else "")
    html = (
        request.app.state.pages.environment(lang)
        .get_template(name)
        .render(
            user=user,
            lang=lang,
            languages=LANGUAGES,
            here=request.url.path,
            **context,
        )
    )
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(
            "desk-lang", lang, max_age=365 * 86400, path="/desk", samesite="lax", httponly=True
        )
    return response


async def refused(request: Request, exc: Exception) -> Response:
    """The app's handler of :class:`DeskRefusal`: a redirect, or a page with the status."""
    assert isinstance(exc, DeskRefusal)
    if exc.location:
        return RedirectResponse(exc.location, status_code=exc.status_code)
    found = await run_in_threadpool(_resolve, request)
    response = page(
        request,
        found.user if found else None,
        "refused.html.j2",
        status=exc.status_code,
        message=exc.message,
        retry_after=exc.retry_after,
    )
    if exc.retry_after:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _safe_next(target: str) -> str:
    """Where to go after login: a desk path only (no open redirect)."""
    if target.startswith("/desk") and not target.startswith("//") and "\\" not in target:
        return target
    return "/desk/"


def access_router() -> APIRouter:
    """Login and logout: ``GET/POST /desk/login``, ``POST /desk/logout``."""
    router = APIRouter()

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/desk/") -> Response:
        """The login page; a logged-in user goes straight on."""
        if _resolve(request) is not None:
            return RedirectResponse(_safe_next(next[:_MAX_FIELD]), status_code=303)
        return _login_page(request, next[:_MAX_FIELD], error="")

    @router.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        name: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        password: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        csrf: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        next: Annotated[str, Form(max_length=_MAX_FIELD)] = "/desk/",
    ) -> Response:
        """Check the pre-session token, the failure limits, then the password; on success a
        new session and 303 to ``next``."""
        access = access_of(request)
        expected = request.cookies.get(access.login_cookie, "")
        if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
            raise DeskRefusal(403, FORGED)
        rt = access.runtime
        peer = client_ip(request, access.trusted) or "unknown"
        name = name.strip()
        wait = max(access.peers.retry_after(peer), access.accounts.retry_after(name.casefold()))
        now = rt.clock.now()
        if wait:
            with rt.session() as session:
                audit.record(session, name, "login.limited", "", at=now)
            raise DeskRefusal(429, "Too many failed logins. Try again later.", retry_after=wait)
        with rt.session() as session:
            user = accounts.authenticate(session, name, password, now)
            if user is None:
                audit.record(session, name, "login.failed", "", at=now)
            else:
                login = accounts.open_session(session, user, now, access.policy)
                audit.record(session, user.name, "login", "", at=now)
        if user is None:
            access.peers.failed(peer)
            access.accounts.failed(name.casefold())
            return _login_page(request, next, error="wrong", status=401)
        response = RedirectResponse(_safe_next(next), status_code=303)
        lifetime = int(access.policy.lifetime.total_seconds())
        access.set_cookie(response, access.cookie, login.token, lifetime)
        access.forget_cookie(response, access.login_cookie)
        return response

    @router.post("/logout", dependencies=[Depends(csrf)])
    def logout(request: Request, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """End this session (revoked in the database, the cookie deleted)."""
        access = access_of(request)
        rt = access.runtime
        with rt.session() as session:
            accounts.revoke(session, request.cookies.get(access.cookie, ""), rt.clock.now())
            audit.record(session, user.name, "logout", "", at=rt.clock.now())
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        access.forget_cookie(response, access.cookie)
        return response

    return router


def _login_page(request: Request, next: str, error: str, status: int = 200) -> Response:
    access = access_of(request)
    token = request.cookies.get(access.login_cookie, "")
    if not 20 <= len(token) <= 100:
        token = secrets.token_urlsafe(32)
    response = page(
        request, None, "login.html.j2", status=status, csrf=token, next=next, error=error
    )
    access.set_cookie(response, access.login_cookie, token, _LOGIN_COOKIE_SECONDS)
    return response
