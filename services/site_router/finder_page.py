"""The public site finder page: static HTML, CSS and JS (no build step, nothing from a CDN) that call the
public ``GET /v1/sites/nearby`` of the same origin. No token, like the API it calls.

The files ship as package data under ``static/`` and are served from a fixed list (no path from the
request ever reaches the file system). A strict Content-Security-Policy lets the page load only its own
script and stylesheet and talk only to its own origin.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response

STATIC_DIR = Path(__file__).with_name("static")

PAGE_PATH = "/sites/finder"
ASSETS_PATH = "/sites/finder/static"

_TYPES = {
    "finder.html": "text/html; charset=utf-8",
    "finder.js": "text/javascript; charset=utf-8",
    "finder.css": "text/css; charset=utf-8",
}

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files: revalidate every time (a 304 by ETag), so a deployment never mixes old and new.
    "Cache-Control": "no-cache",
}

router = APIRouter()


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def _asset(name: str) -> _Asset:
    """Read once per process; the files change only with a deployment."""
    body = (STATIC_DIR / name).read_bytes()
    return _Asset(body, _TYPES[name], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _serve(request: Request, name: str) -> Response:
    asset = _asset(name)
    headers = {**_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get(PAGE_PATH, include_in_schema=False)
async def finder_page(request: Request) -> Response:
    """The page where patients and referrers find the recruiting sites nearest a postal code."""
    return _serve(request, "finder.html")


@router.get(f"{ASSETS_PATH}/finder.js", include_in_schema=False)
async def finder_script(request: Request) -> Response:
    return _serve(request, "finder.js")


@router.get(f"{ASSETS_PATH}/finder.css", include_in_schema=False)
async def finder_stylesheet(request: Request) -> Response:
    return _serve(request, "finder.css")
