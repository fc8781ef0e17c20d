"""Requests of the web view -> responses, as values: the worker's HTTP server only carries them.

Read-only: every route answers GET from the pipeline's state as of its latest event time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import orjson

from stream_app.pipeline import Pipeline
from stream_app.web import pages, views

PREFIX = "/ui"
MAX_PERIOD_SECONDS = 400 * 86400.0
MAX_RELEASES = 1000


@dataclass(frozen=True, slots=True)
class WebResponse:
    """What to answer: status, content type and body (headers beyond that in `headers`)."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json(data: object, status: int = 200) -> WebResponse:
    body = orjson.dumps(data)
    return WebResponse(status, "application/json", body, {"Cache-Control": "no-store"})


def _error(status: int, message: str) -> WebResponse:
    return _json({"error": message}, status)


def _period(pipeline: Pipeline, query: Mapping[str, str]) -> float | WebResponse:
    raw = query.get("period")
    if raw is None or raw == "":
        return pipeline.report_period_seconds
    try:
        p = float(raw)
    except ValueError:
        return _error(400, "period must be a number of seconds")
    if not math.isfinite(p) or not 0 < p <= MAX_PERIOD_SECONDS:
        return _error(400, f"period must be in (0, {MAX_PERIOD_SECONDS:g}] seconds")
    return p


def _html(page: str) -> WebResponse:
    # frame-ancestors works only as a header (browsers ignore it in a <meta> policy).
    csp = pages.LIVE_CSP + "; frame-ancestors 'none'"
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-store"}
    return WebResponse(200, "text/html", pages.page_html(page, PREFIX).encode(), headers)


def _asset(name: str) -> WebResponse:
    return WebResponse(200, pages.ASSETS[name], pages.asset(name).encode())


def _flow(pipeline: Pipeline, query: Mapping[str, str]) -> WebResponse:
    p = _period(pipeline, query)
    return p if isinstance(p, WebResponse) else _json(views.flow_view(pipeline, None, p))


def _dora(pipeline: Pipeline, query: Mapping[str, str]) -> WebResponse:
    p = _period(pipeline, query)
    return p if isinstance(p, WebResponse) else _json(views.dora_view(pipeline, None, p))


def _value(pipeline: Pipeline, query: Mapping[str, str]) -> WebResponse:
    p = _period(pipeline, query)
    return p if isinstance(p, WebResponse) else _json(views.value_view(pipeline, None, p))


def _releases(pipeline: Pipeline, query: Mapping[str, str]) -> WebResponse:
    return _json(views.releases_view(pipeline, None, MAX_RELEASES))


def _release(pipeline: Pipeline, query: Mapping[str, str]) -> WebResponse:
    rid = query.get("id", "")
    view = views.release_view(pipeline, rid) if rid else None
    return _error(404, "no such release") if view is None else _json(view)


Handler = Callable[[Pipeline, Mapping[str, str]], WebResponse]


def _fixed(response: Callable[[], WebResponse]) -> Handler:
    return lambda _pipeline, _query: response()


ROUTES: dict[str, Handler] = {
    PREFIX: _fixed(lambda: WebResponse(302, "text/plain", b"", {"Location": f"{PREFIX}/vsm"})),
    **{f"{PREFIX}/{page}": _fixed(partial(_html, page)) for page in pages.PAGES},
    **{f"{PREFIX}/static/{name}": _fixed(partial(_asset, name)) for name in pages.ASSETS},
    f"{PREFIX}/api/flow": _flow,
    f"{PREFIX}/api/dora": _dora,
    f"{PREFIX}/api/value": _value,
    f"{PREFIX}/api/releases": _releases,
    f"{PREFIX}/api/release": _release,
}


def respond(pipeline: Pipeline, path: str, query: Mapping[str, str]) -> WebResponse:
    """The response to GET `path` with `query` (404 for a path that is not a route)."""
    handler = ROUTES.get(path)
    return handler(pipeline, query) if handler is not None else _error(404, "not found")
