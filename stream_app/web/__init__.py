"""The read-only web view (value stream map, releases, DORA) and the static HTML report.

`register_web` adds the pages to the worker's own HTTP server (the one serving /metrics, bound to
``metrics_host``); `write_report` writes the same views as one self-contained HTML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the view models stay importable without faust (replay's report needs none)
    import faust

    from stream_app.pipeline import Pipeline
    from stream_app.settings import Settings


def register_web(app: faust.App, pipeline: Pipeline, settings: Settings) -> list[str]:
    """Serve the web view under /ui on the faust app's web server; returns the paths added."""
    from aiohttp import web
    from faust.web import Request, View

    from stream_app.web.routes import ROUTES, respond

    def add(path: str) -> None:
        async def get(self: View, request: Request) -> web.Response:
            r = respond(pipeline, path, request.rel_url.query)
            return web.Response(
                status=r.status, body=r.body, headers={"Content-Type": r.content_type, **r.headers}
            )

        name = "valueloop_ui" + path[len("/ui") :].replace("/", "_").replace(".", "_")
        get.__name__ = name
        app.page(path, name=name)(get)  # type: ignore[arg-type]  # an aiohttp Response is served

    for path in ROUTES:
        add(path)
    return list(ROUTES)


def write_report(pipeline: Pipeline, out: Path, title: str = "valueloop report") -> Any:
    """Write the static report of the pipeline's state (as of its latest event) to `out`."""
    from stream_app.web.pages import report_html
    from stream_app.web.views import report_bundle

    bundle = report_bundle(pipeline, None, title)
    out.write_text(report_html(bundle), encoding="utf-8")
    return bundle
