"""Operators' endpoints on the web app: ``/metrics``, ``/readyz`` and the ``/dashboard``.

``/metrics`` serves every process's counters (prometheus-client multiprocess mode) plus gauges
read from the ledger, only to a scraper that sends ``Authorization: Bearer
<NEWSLETTER_METRICS_TOKEN>`` (RFC 6750 §2.1; constant-time comparison): the counters move by
one per signup, so anyone reading them could tell whether an address just subscribed. Without a
token configured ``/metrics`` answers 404, as if it did not exist. ``/readyz`` answers 200 only
when the database and Redis answer (load balancers and Kubernetes take the process out of
rotation otherwise; ``/healthz`` in ``worker.web.app`` only says the process is alive).
``/dashboard`` is behind HTTP Basic authentication (RFC 7617) with the password
``NEWSLETTER_OPERATOR_PASSWORD`` (any user name); with no password configured nobody gets in.
Failed logins are counted per peer and in all (:mod:`worker.operators.logins`): over the limit
every attempt gets ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

import idna
import jinja2
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from markupsafe import Markup
from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.editions.store import NoNewsletter
from worker.operators import charts
from worker.operators.dashboard import (
    COMPLAINT_LIMIT,
    COMPLAINT_WARN,
    FUNNEL_COLUMNS,
    UNSUBSCRIBE_DEADLINE,
    LedgerCollector,
    Overview,
    overview,
)
from worker.operators.logins import Logins, MemoryLogins, RedisLogins
from worker.operators.metrics import exposition
from worker.runtime import Runtime
from worker.settings import TEMPLATES_DIR

_basic = HTTPBasic(realm="newsletter operators", auto_error=False)
_BEARER_PREFIX = "bearer "
# The largest id PostgreSQL's bigint holds: a bigger ?send= was an OverflowError (answer 500).
MAX_ID = 2**63 - 1


def operator_router(runtime: Runtime) -> APIRouter:
    """The router for ``runtime``; include it in the FastAPI app."""
    router = APIRouter()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR / "operator")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(percent=_percent, duration=_duration, domain=unicode_domain)
    session_factory: Callable[[], AbstractContextManager[Session]] = runtime.session

    logins = _logins(runtime)

    def operator(
        request: Request, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
    ) -> None:
        peer = request.client.host if request.client else ""
        wait = logins.retry_after(peer)
        if wait:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many failed logins: try again in {wait} seconds",
                headers={"Retry-After": str(wait)},
            )
        expected = runtime.settings.operator_password
        given = credentials.password if credentials else ""
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            if credentials is not None:  # a browser's first request carries none: not a guess
                logins.failed(peer)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "operator login required",
                headers={"WWW-Authenticate": 'Basic realm="newsletter operators", charset="UTF-8"'},
            )

    def scraper(request: Request) -> None:
        expected = runtime.settings.metrics_token
        if not expected:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
        given = request.headers.get("authorization", "")
        token = given[len(_BEARER_PREFIX) :] if given.lower().startswith(_BEARER_PREFIX) else ""
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "metrics need the scraper's bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )

    @router.get("/metrics", dependencies=[Depends(scraper)], include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text exposition format (version 0.0.4), for the scraper only."""
        body, content_type = exposition([LedgerCollector(session_factory, runtime.clock.now)])
        return Response(body, media_type=content_type)

    @router.get("/readyz")
    def readyz() -> Response:
        """200 ``{"database": "ok", "redis": "ok", "newsletter": "ok"}`` when both answer and a
        newsletter is set up; 503 naming the failure."""
        checks = {
            "database": _check_database(runtime),
            "redis": _check_redis(runtime),
            "newsletter": _check_newsletter(runtime),
        }
        ready = all(v in ("ok", "not configured") for v in checks.values())
        return JSONResponse(
            checks, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"}
        )

    @router.get("/dashboard", response_class=HTMLResponse, dependencies=[Depends(operator)])
    def dashboard(
        send: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        days: Annotated[int, Query(ge=1, le=365)] = 30,
    ) -> Response:
        """The dashboard page (server-rendered HTML with inline SVG charts)."""
        with session_factory() as session:
            data = overview(
                session,
                runtime.clock.now(),
                send_id=send,
                days=days,
                cache_seconds=runtime.settings.dashboard_cache_seconds,
            )
        html = env.get_template("dashboard.html.j2").render(
            o=data,
            charts=charts,
            columns=FUNNEL_COLUMNS,
            warn=COMPLAINT_WARN,
            limit=COMPLAINT_LIMIT,
            deadline_hours=int(UNSUBSCRIBE_DEADLINE.total_seconds() // 3600),
            rate_chart=_rate_chart(data),
            signup_chart=_signup_chart(data),
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    return router


def _logins(runtime: Runtime) -> Logins:
    s = runtime.settings
    per_peer, total = s.operator_login_failures_per_peer, s.operator_login_failures_total
    if runtime.redis is None:
        return MemoryLogins(per_peer, total, s.secret_key)
    return RedisLogins(runtime.redis, per_peer, total, s.secret_key)


def _rate_chart(data: Overview) -> Markup:
    if data.selected is None:
        return Markup("")
    fmt = "%H:%M:%S" if data.selected.rate_bucket_seconds < 60 else "%m-%d %H:%M"
    points = [(at.strftime(fmt), float(n)) for at, n in data.selected.rate]
    return charts.bars(points, width=460, colour=charts.COLOURS["sent"], title="send rate")


def _signup_chart(data: Overview) -> Markup:
    points = [(day.day.isoformat(), float(day.signups)) for day in data.signups]
    rates = [
        (day.day.isoformat(), round((day.confirmation_rate or 0.0) * 100, 1))
        for day in data.signups
    ]
    if not any(value for _, value in points):
        return Markup('<p class="muted">No signup in the window.</p>')
    return Markup(
        '<p class="muted">signups per day</p>'
        + charts.bars(points, height=120, title="signups per day", unit=" signups")
        + '<p class="muted">confirmation rate (% of the day\'s signups)</p>'
        + charts.bars(
            rates,
            height=80,
            colour=charts.COLOURS["confirmed"],
            title="confirmation rate",
            unit="%",
        )
    )


def unicode_domain(domain: str) -> str:
    """``xn--80a1acn3a.xn--90ais`` → ``пошта.бел``: a recipient domain as readers write it (IDNA
    2008, RFC 5891 §5); a name that is not a valid A-label is shown as stored."""
    try:
        return str(idna.decode(domain))
    except (idna.IDNAError, UnicodeError):
        return domain


def _check_newsletter(runtime: Runtime) -> str:
    """ "ok", or why signups cannot be taken yet (no edition loaded, no profile path)."""
    try:
        runtime.signup_languages()
    except NoNewsletter:
        return "not set up: load an edition or set NEWSLETTER_NEWSLETTER_PATH"
    except Exception as exc:  # the database check names database trouble
        return f"unknown: {type(exc).__name__}"
    return "ok"


def _check_database(runtime: Runtime) -> str:
    try:
        with runtime.session() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # any driver error means "not ready"
        return f"error: {type(exc).__name__}"


def _check_redis(runtime: Runtime) -> str:
    url = runtime.settings.redis_url
    if not url:
        return "not configured"
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
        return "ok"
    except redis.RedisError as exc:
        return f"error: {type(exc).__name__}"
    finally:
        client.close()


def _percent(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


__all__ = ["operator_router"]
