"""Progress bars for the long ``cloud-trainer`` commands (prepare, train, export, publish, rollout), for
a person at a terminal: a spinner or bar, the time spent, and the latest log line.

Only when both stdout and stderr are terminals (and ``TERM`` is not ``dumb``): captured output (tests,
CI, ``| tee``) stays exactly the lines it always was. The bar is an addition: every log line and
printed line still appears, above the bar, and the bar disappears when the command ends.

Uses rich (the trainer extra's dependency; keras brings it too). What a command counts, if
anything, is the command's business: it calls :meth:`Activity.advance`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


def interactive(streams: tuple[TextIO, ...] | None = None) -> bool:
    """True when a person watches: every stream is a terminal and the terminal can redraw."""
    if os.environ.get("TERM") == "dumb":
        return False
    return all(s.isatty() for s in (streams or (sys.stdout, sys.stderr)))


class Activity:
    """What a command reports while it works; does nothing without a terminal."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: float = 1.0) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def update(self, completed: float, total: float | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, note=text if len(text) <= 80 else text[:77] + "...")


class _LatestLine(logging.Handler):
    def __init__(self, activity: Activity) -> None:
        super().__init__(logging.INFO)
        self.activity = activity

    def emit(self, record: logging.LogRecord) -> None:
        self.activity.note(record.getMessage())


@contextlib.contextmanager
def activity(title: str, total: float | None = None, unit: str = "") -> Iterator[Activity]:
    """A bar (``total`` known) or a spinner on stderr while the block runs, if :func:`interactive`."""
    if not interactive():
        yield Activity()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = [SpinnerColumn(), TextColumn(f"[bold]{title}"), BarColumn(),
               TextColumn("{task.completed:.0f}/{task.total:.0f} " + unit if total else ""),
               TimeElapsedColumn(), TextColumn("{task.fields[note]}", markup=False)]
    progress = Progress(*columns, console=Console(file=sys.stderr), transient=True,
                        redirect_stdout=True, redirect_stderr=True)
    root, stderr = logging.getLogger(), sys.stderr
    with progress:
        # log handlers hold the real stderr: point them at rich's proxy so lines print above the bar
        moved = [(h, h.setStream(sys.stderr)) for h in root.handlers
                 if isinstance(h, logging.StreamHandler) and h.stream is stderr]
        current = Activity(progress, progress.add_task(title, total=total, note=""))
        latest = _LatestLine(current)
        root.addHandler(latest)
        try:
            yield current
        finally:
            root.removeHandler(latest)
            for handler, stream in moved:
                handler.setStream(stream)
