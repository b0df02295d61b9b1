"""`GET /status` and its assets: the status page, served from `agents/web/static/`.

The page is static: it holds no data and no secret, so it is served without a token, like a
login form. Everything it shows it fetches from the admin API with the token it gets from
`POST /api/token` (kept in the browser tab's sessionStorage), so it shows only what the
caller may read, masked as the API masks it.

Only the files named in `ASSETS` are served (no directory listing, no path from the
request reaches the file system), read once when the worker starts. The charting library,
uPlot, is vendored under `static/vendor/uplot/` (its version and origin in the README next
to it): the page loads nothing from anywhere but the worker. The Content-Security-Policy
says so to the browser too: scripts, styles and connections to this origin only.
"""

from __future__ import annotations

from importlib import resources

import faust
from faust.web import Request, Response, View

#: name in the URL -> (file under static/, content type)
ASSETS: dict[str, tuple[str, str]] = {
    "status.js": ("status.js", "text/javascript; charset=utf-8"),
    "status.css": ("status.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
}
INDEX = "index.html"
#: Content types go in the headers: aiohttp refuses a charset in `content_type`.
HTML = "text/html; charset=utf-8"

#: Same origin only; `data:` images for the empty favicon; no framing by other sites.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new Herald version's page is fetched again rather than mixed with a cached one.
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("agents.web").joinpath("static", *name.split("/")).read_bytes()


def register_status_page(app: faust.App) -> None:
    """Serve `/status` (the page) and `/status/assets/{name}` (its script, styles, uPlot)."""
    index = _read(INDEX)
    assets = {name: (_read(path), kind) for name, (path, kind) in ASSETS.items()}

    @app.page("/status")
    class StatusPage(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(index, headers={**HEADERS, "Content-Type": HTML})

    @app.page("/status/assets/{name}")
    class StatusAsset(View):
        async def get(self, request: Request, name: str) -> Response:
            found = assets.get(name)
            if found is None:
                headers = {**HEADERS, "Content-Type": "text/plain; charset=utf-8"}
                return self.bytes(b"not found", status=404, headers=headers)
            body, kind = found
            return self.bytes(body, headers={**HEADERS, "Content-Type": kind})
