"""The web dashboard: static pages and modules from `api/ui/`, under a strict Content-Security-Policy.

Everything the browser loads comes from this directory (no CDN, no build step), so the UI works
offline. The pages talk to the same API with a bearer token; nothing here authenticates, since
the files hold no data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from api.errors import ApiError

UI_DIR = Path(__file__).resolve().parents[1] / "ui"

# No inline script or style anywhere in the UI, so none is allowed: an injected <script> or
# onerror= attribute cannot run even if some text ever reached the DOM as markup.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
UI_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidate every load (FileResponse sends ETag / Last-Modified): an upgrade is seen at once.
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    # The pages use relative URLs, which need the trailing slash.
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/{path:path}")
async def ui_file(path: str) -> FileResponse:
    target = (UI_DIR / (path or "index.html")).resolve()
    media_type = MEDIA_TYPES.get(target.suffix)
    if media_type is None or not target.is_relative_to(UI_DIR) or not target.is_file():
        raise ApiError(404, "not_found", f"No UI file {path!r}")
    return FileResponse(target, media_type=media_type, headers=UI_HEADERS)
