"""HTML of the web view's pages and of the static report, from the assets shipped in the package."""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files
from string import Template
from typing import Any

import orjson

PAGES: tuple[str, ...] = ("vsm", "releases", "value", "dora")
TITLES = {"vsm": "Value stream map", "releases": "Releases", "value": "Value", "dora": "DORA"}
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
# Served pages fetch only from the worker itself; the report fetches nothing at all.
LIVE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
REPORT_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)


@cache
def asset(name: str) -> str:
    """The text of a shipped asset (app.js, app.css, page.html)."""
    return (files("stream_app.web") / "static" / name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """JSON safe inside a <script> element: no "<" can close it or open a comment."""
    return orjson.dumps(data).decode().replace("<", "\\u003c")


def _inline(tag: str, text: str) -> str:
    # An inlined script or stylesheet must not contain its own closing tag.
    safe = text.replace(f"</{tag}", "<\\/" + tag)
    return f"<{tag}>{safe}</{tag}>"


def page_html(page: str, prefix: str = "/ui") -> str:
    """A served page: the shell that loads the shipped script, which fetches its JSON."""
    return Template(asset("page.html")).substitute(
        csp=LIVE_CSP,
        title=f"valueloop · {TITLES[page]}",
        page=page,
        style=f'<link rel="stylesheet" href="{prefix}/static/app.css">',
        data="",
        script=f'<script src="{prefix}/static/app.js"></script>',
    )


def report_html(bundle: dict[str, Any]) -> str:
    """The static report: one self-contained file, the same script with the data inlined."""
    title = str(bundle.get("title") or "valueloop report")
    return Template(asset("page.html")).substitute(
        csp=REPORT_CSP,
        title=html.escape(title),
        page="vsm",
        style=_inline("style", asset("app.css")),
        data=f'<script id="valueloop-data" type="application/json">{embed_json(bundle)}</script>',
        script=_inline("script", asset("app.js")),
    )
