"""``GET /images/<edition>/<file>``: the images an edition keeps in its own folder, copied by
``edition load`` (``worker.editions.images``), so mail clients load them from the newsletter's
own domain. Long cache (a year, immutable, RFC 8246): the web server is asked once per reader's
client at most, and a proxy or CDN in front answers the rest."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, PlainTextResponse, Response

from worker.editions.images import CONTENT_TYPES, stored_image
from worker.web.dependencies import RuntimeDep

router = APIRouter()

CACHE = "public, max-age=31536000, immutable"


@router.get("/images/{edition}/{name}", response_model=None)
def edition_image(edition: str, name: str, rt: RuntimeDep) -> Response:
    """The stored image ``name`` of ``edition``; 404 for anything else (no listing, no path
    outside ``NEWSLETTER_IMAGES_DIR``)."""
    path = stored_image(rt.settings.images_dir, edition, name)
    if path is None:
        return PlainTextResponse("no such image", status_code=404)
    media_type = CONTENT_TYPES[path.suffix.lower()]
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": CACHE})
