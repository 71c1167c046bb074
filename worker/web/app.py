"""The web app (FastAPI): the links in mails, the readers' pages (preferences, the hosted signup
page), the signup endpoint, the edition archive and its feed, health, the operators' endpoints and
the provider webhooks, one router per concern.

Run with ``uvicorn --factory worker.web.app:create_app``. No cookies and no sessions; no CSRF
tokens on the unsubscribe links: RFC 8058 one-click POSTs arrive without any (the preferences
page's forms carry one bound to the link, see ``worker.web.preferences``). GET requests never change
anything, because mail security gateways fetch every link in a mail within seconds of delivery.
"""

from __future__ import annotations

from fastapi import FastAPI

from worker.runtime import Runtime, runtime
from worker.web import archive, health, links, preferences, signup, subscribe
from worker.web.operators import operator_router
from worker.web.pages import Pages
from worker.web.webhooks import WebhookAdapters, webhook_router


def create_app(rt: Runtime | None = None, webhooks: WebhookAdapters | None = None) -> FastAPI:
    """The ASGI app on ``rt`` (default: the process's runtime, see ``worker.runtime.runtime``);
    ``webhooks`` replaces the SES route's network edges (tests)."""
    rt = rt or runtime()
    app = FastAPI(title="Newsletter", docs_url=None, redoc_url=None)
    app.state.runtime = rt
    app.state.pages = Pages()
    app.include_router(operator_router(rt))  # /metrics, /readyz, /dashboard
    app.include_router(webhook_router(rt, webhooks))  # /webhooks/{ses,postmark,sendgrid,mailgun}
    for concern in (health, links, preferences, archive, signup, subscribe):
        app.include_router(concern.router)
    return app
