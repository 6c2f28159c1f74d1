"""The console's Flask app (:func:`create_app`): server-rendered pages, read-only, every value
escaped by Jinja's autoescaping (device ids and statuses come from devices).

Pages: ``/`` the fleet (agents, rollouts in progress, outcomes; refreshes itself with a meta
tag, no JavaScript), ``/runs`` and ``/runs/<name>`` the evaluation reports, ``/preview`` the
recommendation preview (a GET form: it changes nothing). The services are passed in: statuses
from a callable (a :class:`cloud_trainer.delivery.fleet_status.FleetWatcher` in production),
a clock, a :class:`.preview.Previewer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, render_template, request

from cloud_trainer.console.access import authorized
from cloud_trainer.console.fleet_view import fleet_view, percent
from cloud_trainer.console.preview import Previewer, PreviewError, parse_request
from cloud_trainer.console.report_view import find_run, list_runs, report_view
from shared.events import EventKind
from shared.recommendation import Exclude

log = logging.getLogger(__name__)

#: No scripts, no external anything: the pages are HTML, inline CSS and inline SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class ConsoleConfig:
    fleet: str = "default"
    runs: Path | None = None
    token: str | None = None  # required on every request when set (see .access)
    refresh_s: int = 5


@dataclass
class ConsoleServices:
    statuses: Callable[[], Mapping[str, Mapping[str, Any]]]
    previewer: Previewer = field(default_factory=Previewer)
    clock: Callable[[], float] = time.time


def create_app(config: ConsoleConfig, services: ConsoleServices) -> Flask:
    app = Flask(__name__, template_folder="templates")
    app.jinja_env.autoescape = True  # every template, whatever its name
    app.jinja_env.filters["percent"] = percent

    @app.before_request
    def _gate() -> Response | None:
        if authorized(config.token, request.headers.get("Authorization")):
            return None
        log.info("console: refused a request without a valid token (%s)", request.path[:80])
        return Response("a token is needed: Authorization: Bearer <token>, or Basic with the token as password\n",
                        401, {"WWW-Authenticate": 'Basic realm="edge-rec console", charset="UTF-8"',
                              "Content-Type": "text/plain; charset=utf-8"})

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/")
    def fleet() -> str:
        now = services.clock()
        view = fleet_view(config.fleet, services.statuses(), now)
        return render_template("fleet.html", view=view, refresh_s=config.refresh_s,
                               at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))

    @app.get("/runs")
    def runs() -> str:
        return render_template("runs.html", runs=list_runs(config.runs), folder=config.runs)

    @app.get("/runs/<name>")
    def run(name: str) -> str:
        entry = find_run(config.runs, name)
        if entry is None or not entry.evaluated:
            abort(404)
        try:
            view = report_view(entry)
        except (OSError, ValueError) as e:
            return render_template("error.html", message=f"run {name}: evaluation.json cannot be read: {e}")
        return render_template("report.html", view=view)

    @app.get("/preview")
    def preview() -> str:
        with_bundles = [r for r in list_runs(config.runs) if r.has_bundle]
        args = request.args
        chosen = args.get("run", with_bundles[-1].name if with_bundles else "")
        answer, problem = None, None
        if "items" in args:
            entry = next((r for r in with_bundles if r.name == chosen), None)
            try:
                if entry is None:
                    raise PreviewError(f"no run {chosen!r} with a bundle under the runs folder")
                answer = services.previewer.preview(entry.path, parse_request(
                    args.get("items", ""), args.get("kind", ""), args.get("k", ""), args.get("exclude", ""),
                    args.get("category", "")))
            except PreviewError as e:
                problem = str(e)
        return render_template("preview.html", runs=with_bundles, chosen=chosen, args=args, answer=answer,
                               problem=problem, kinds=[k.value for k in EventKind],
                               excludes=[e.value for e in Exclude])

    @app.errorhandler(404)
    def _not_found(error: Exception) -> tuple[str, int]:
        return render_template("error.html", message="no such page"), 404

    return app
