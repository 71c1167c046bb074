"""``GET /healthz``: the process is alive (``/readyz`` in ``worker.web.operators`` also checks
the database and Redis)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

router = APIRouter()


@router.get("/healthz", response_class=PlainTextResponse)
def healthz() -> str:
    """``ok``, always."""
    return "ok"
