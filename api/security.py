"""Browser hardening: security headers on every answer, offline API docs,
and the optional trusted-host check.

- :class:`SecurityHeaders` puts a Content-Security-Policy that allows only
  this origin (``'self'``), ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` on
  every response, errors and static files included. A response that sets its
  own policy keeps it: only ``/docs`` and ``/redoc`` do.
- :func:`add_offline_docs` serves ``/docs`` (Swagger UI) and ``/redoc`` from
  the assets the ``fastapi-offline`` package ships, under ``/docs-assets``: no
  CDN, so the pages work offline and no third-party script runs on the API's
  origin. Their HTML carries small inline scripts and styles; each page's
  policy allows exactly those by their SHA-256 hashes, besides ``'self'``.

The trusted-host check (``ALLOWED_HOSTS``: 400 for any other ``Host``) is
Starlette's ``TrustedHostMiddleware``, added in :mod:`api.main`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Only this origin, for everything; no plugins, no <base>, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # The dashboard links to Flower on another port: it learns nothing of the page.
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

DOCS_ASSETS_URL = "/docs-assets"


class SecurityHeaders:
    """ASGI middleware: the headers of :data:`HEADERS` on every HTTP response
    that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- /docs and /redoc, offline ------------------------------------------------

_INLINE = re.compile(rb"<(script|style)(\s[^>]*)?>(.*?)</\1>", re.DOTALL | re.IGNORECASE)


def _digest(source: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source).digest()).decode() + "'"


def docs_policy(html: bytes, *, also: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """The policy of a docs page: ``'self'``, the SHA-256 hashes of exactly the
    inline scripts and styles ``html`` holds, and the sources in ``also``
    (directive -> sources) that the page's script needs besides."""
    directives: dict[str, list[str]] = {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
    }
    for kind, attrs, body in _INLINE.findall(html):
        if kind.lower() == b"style":
            directives["style-src"].append(_digest(body))
        elif b"src=" not in (attrs or b""):
            directives["script-src"].append(_digest(body))
    for directive, sources in (also or {}).items():
        directives.setdefault(directive, ["'self'"]).extend(sources)
    fixed = ["base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'", "object-src 'none'"]
    return "; ".join(
        [*(" ".join([name, *sources]) for name, sources in directives.items()), *fixed]
    )


# What Swagger UI needs beyond its page: its style sheet draws icons (the
# try-it-out controls) from data: SVG images.
SWAGGER_NEEDS = {"img-src": ("data:",)}

# What redoc.standalone.js (Redoc 2, as fastapi-offline 1.7 ships it) needs
# beyond its page: the empty <style> elements its styled-components fill
# through the CSS object model, and the one it fills with text, perfect-scrollbar's
# style sheet; the data: images of its style sheets; its search index runs in a
# worker made from a blob: URL. tests/test_hardening.py loads the page in
# Chromium and fails on any policy violation, so a Redoc that needs more shows.
REDOC_NEEDS = {
    "style-src": (_digest(b""), "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='"),
    "img-src": ("data:",),
    "worker-src": ("blob:",),
}


def _with_policy(
    page: HTMLResponse, also: Mapping[str, tuple[str, ...]] | None = None
) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = docs_policy(bytes(page.body), also=also)
    return page


def _docs_assets() -> str:
    """The folder of Swagger UI's and Redoc's files in the ``fastapi_offline`` package."""
    return str(resources.files("fastapi_offline").joinpath("static"))


def add_offline_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve ``docs_url`` and ``redoc_url`` from packaged assets; the app must
    be created with ``docs_url=None, redoc_url=None``."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_docs_assets()), name="docs-assets")
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"

    def assets(request: Request) -> str:
        return request.scope.get("root_path", "") + DOCS_ASSETS_URL

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=root + (app.openapi_url or ""),
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{assets(request)}/swagger-ui-bundle.js",
                swagger_css_url=f"{assets(request)}/swagger-ui.css",
                swagger_favicon_url=f"{assets(request)}/favicon.png",
                oauth2_redirect_url=root + oauth2_redirect_url,
                swagger_ui_parameters=app.swagger_ui_parameters,
            ),
            SWAGGER_NEEDS,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return _with_policy(get_swagger_ui_oauth2_redirect_html())

    @app.get(redoc_url, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_redoc_html(
                openapi_url=root + (app.openapi_url or ""),
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{assets(request)}/redoc.standalone.js",
                redoc_favicon_url=f"{assets(request)}/favicon.png",
                with_google_fonts=False,
            ),
            REDOC_NEEDS,
        )
