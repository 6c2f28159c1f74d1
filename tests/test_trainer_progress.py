"""Progress bars on the long cloud-trainer commands: drawn at a terminal (a real pseudo-terminal here),
absent when output is captured, and the command's own lines are the same either way."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def prepare_command(source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cloud_trainer.cli", "prepare", "online-retail", "--input", str(source),
            "--out", str(out)]


def run_at_a_terminal(command: list[str]) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal, as a person at a shell would; all it wrote."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(command, stdout=secondary, stderr=secondary, cwd=ROOT,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    return proc.wait(120), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_prepare_draws_a_bar_at_a_terminal_and_prints_the_same_lines(retail_slice: Path, tmp_path: Path) -> None:
    captured = subprocess.run(prepare_command(retail_slice, tmp_path / "a"), capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
    assert captured.returncode == 0, captured.stderr
    assert "\x1b[" not in captured.stdout + captured.stderr  # no bar, no escape codes when captured
    assert "prepare online-retail" not in captured.stderr

    code, shown = run_at_a_terminal(prepare_command(retail_slice, tmp_path / "b"))
    assert code == 0, shown
    assert "prepare online-retail" in shown and "\x1b[" in shown  # the bar was drawn (and redrawn)
    plain = ANSI.sub("", shown)
    for line in captured.stdout.splitlines():  # every printed line still there, whole
        assert line.replace(str(tmp_path / "a"), str(tmp_path / "b")) in plain, line
