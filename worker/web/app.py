"""The web app (FastAPI): the links in mails, the readers' pages (preferences, the hosted signup
page), the signup endpoint, the edition archive and its feed, health, the operators' endpoints and
the provider webhooks, one router per concern.

Run with ``uvicorn --factory worker.web.app:create_app``. No cookies and no sessions outside the
editors' desk (``/desk``, ``worker.web.desk``: a login, its cookie and CSRF tokens); no CSRF
tokens on the unsubscribe links: RFC 8058 one-click POSTs arrive without any (the preferences
page's forms carry one bound to the link, see ``worker.web.preferences``). GET requests never change
anything, because mail security gateways fetch every link in a mail within seconds of delivery.

The app is public: it publishes no API description (``/openapi.json``, ``/docs``, ``/redoc``)
unless ``NEWSLETTER_API_DOCS`` is on, caps every request body (:class:`worker.web.guards.BodyLimit`)
and sends the security headers on every response (:class:`worker.web.guards.SecurityHeaders`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from worker.editions.store import NoNewsletter
from worker.logs import UVICORN_LOGGERS, redact_handlers
from worker.runtime import Runtime, runtime
from worker.web import archive, health, images, links, preferences, signup, subscribe
from worker.web.desk import desk_router, starts
from worker.web.desk.access import DeskRefusal, refused
from worker.web.guards import BodyLimit, SecurityHeaders
from worker.web.operators import operator_router
from worker.web.pages import Pages
from worker.web.webhooks import WebhookAdapters, webhook_router


def create_app(rt: Runtime | None = None, webhooks: WebhookAdapters | None = None) -> FastAPI:
    """The ASGI app on ``rt`` (default: the process's runtime, see ``worker.runtime.runtime``);
    ``webhooks`` replaces the SES route's network edges (tests)."""
    rt = rt or runtime()
    # Started as `uvicorn --factory …`, uvicorn's own access log would keep /u/<token> and IPs.
    redact_handlers(rt.settings, UVICORN_LOGGERS)
    s = rt.settings
    docs = s.api_docs
    app = FastAPI(
        title="Newsletter",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.runtime = rt
    app.state.pages = Pages()
    app.add_exception_handler(NoNewsletter, _not_set_up)
    app.add_exception_handler(DeskRefusal, refused)
    app.include_router(operator_router(rt))  # /metrics, /readyz, /dashboard
    app.include_router(webhook_router(rt, webhooks))  # /webhooks/{ses,postmark,sendgrid,mailgun}
    app.include_router(desk_router(rt))  # /desk: the editors' desk, behind a login
    for concern in (health, links, preferences, archive, signup, subscribe, images):
        app.include_router(concern.router)
    limits = [
        ("/signup", s.signup_max_bytes),
        ("/webhooks/", s.webhook_max_bytes),
        ("/desk/editions/new", starts.MAX_BODY_BYTES),  # an uploaded edition zip
        ("/desk/editions/", s.desk_form_max_bytes),  # the whole edition in one form
    ]
    # /subscribe and /p/ are forms of a few hundred bytes: the default cap applies
    # An upload over its cap gets the start form again, with the error, not the JSON 413
    pages = [(starts.PATH, starts.too_large(rt))]
    app.add_middleware(BodyLimit, limits=limits, default=s.request_max_bytes, pages=pages)
    app.add_middleware(SecurityHeaders)  # outermost: a 413 of BodyLimit gets the headers too
    return app


async def _not_set_up(request: Request, exc: Exception) -> Response:
    """503 with the way out (load an edition or set the profile path), not a 500: the service
    is up but not set up yet, and a website may retry later."""
    body = {"status": "unavailable", "reason": "not_set_up", "detail": str(exc)}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "300"})
