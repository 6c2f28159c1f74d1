"""``cloud-trainer`` as a child process, for benchmarks and simulations that drive the trainer
the way an ML engineer does (its own CLI, its own process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``cloud-trainer ARGS`` and return what happened (TensorFlow's log chatter turned down)."""
    return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)


def output(*args: str) -> str:
    """The standard output of ``cloud-trainer ARGS``; RuntimeError with its last words if it failed."""
    done = run(*args)
    if done.returncode != 0:
        raise RuntimeError(f"cloud-trainer {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout
