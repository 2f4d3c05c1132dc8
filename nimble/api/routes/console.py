"""The console (`/ui`): the static pages and files of nimble's browser console, shipped in the
package (`nimble/api/console/`), read once and served from memory.

The files hold nothing secret and need no key (a browser cannot send a bearer key when it
opens a page or loads a script); everything the page shows it reads through the public
API with the key typed into it, kept in the tab's sessionStorage. Added to the app only when
the console is on (`Settings.console_on`); off, `/ui` is 404 like an unknown path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException

from nimble.api.route import Route

router = APIRouter(route_class=Route)

# the pages (one HTML document; the script reads the path): /ui/ is the playground
PAGES = frozenset({"", "embeddings", "status", "docs"})
ASSETS = "assets/"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# the page runs only its own files and talks only to its own origin: a model's answer
# shown in it cannot load a script or send what it reads elsewhere
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # revalidated on every load (ETag): a new nimble's page never runs with old modules
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def console_files() -> dict[str, Asset]:
    """Every file of the console by its path under /ui/ (`index.html`, `assets/app.js`)."""
    root = files("nimble.api").joinpath("console")
    found: dict[str, Asset] = {}
    for entry in root.iterdir():
        if entry.name == "assets":
            found.update((ASSETS + f.name, _asset(f.name, f.read_bytes())) for f in entry.iterdir())
        elif entry.is_file():
            found[entry.name] = _asset(entry.name, entry.read_bytes())
    return {path: asset for path, asset in found.items() if asset.media_type}


def _asset(name: str, body: bytes) -> Asset:
    suffix = name[name.rfind(".") :] if "." in name else ""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, _TYPES.get(suffix, ""), etag)


def _send(request: Request, path: str) -> Response:
    asset = console_files().get(path)
    if asset is None:
        raise HTTPException(404)  # the answer of any unknown path
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/ui", include_in_schema=False, response_class=Response)
async def console_root(request: Request) -> Response:
    # relative, so that it holds under a path prefix (root_path) too; the pages' relative
    # links need the trailing slash
    return Response(status_code=308, headers={"Location": "ui/"})


@router.get("/ui/", include_in_schema=False, response_class=Response)
async def console_index(request: Request) -> Response:
    return _send(request, "index.html")


@router.get("/ui/{path:path}", include_in_schema=False, response_class=Response)
async def console_file(request: Request, path: str) -> Response:
    if path in PAGES:
        return _send(request, "index.html")
    if not path.startswith(ASSETS):
        raise HTTPException(404)
    return _send(request, path)
