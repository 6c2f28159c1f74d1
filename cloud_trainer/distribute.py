"""Where a training run executes: the tf.distribute strategy, this process's place in a cluster, and
the directory it writes.

* ``none``: TensorFlow's default strategy, one device.
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over this machine's GPUs, else its (logical) CPUs.
* ``multi-worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across the hosts listed in the
  ``TF_CONFIG`` environment variable (docs/scale.md, "Training on a cluster"). Every worker runs the
  same command on the same data; the chief (task type ``chief``, else worker 0) writes the run
  directory, the others write to a temporary directory removed afterwards (the usual Keras
  multi-worker pattern: every worker runs the same steps, one keeps the result).

The strategy and TF_CONFIG checks are here; what is trained, and how the data is split over the
replicas, is :mod:`cloud_trainer.train` and :mod:`cloud_trainer.models.retrieval`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

DISTRIBUTE = ("none", "mirrored", "multi-worker")
TF_CONFIG_HELP = ('set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                  '"task": {"type": "worker", "index": 0}} (docs/scale.md)')


@dataclass(frozen=True)
class Placement:
    """This process's place among the workers of a run."""

    workers: int = 1
    task_type: str = "worker"
    task_index: int = 0
    chief: bool = True


def placement_from_tf_config(text: str | None) -> Placement:
    """The placement ``TF_CONFIG`` describes; ValueError, naming the fix, for a missing or wrong one."""
    if not text:
        raise ValueError(f"--distribute multi-worker needs the TF_CONFIG environment variable: {TF_CONFIG_HELP}")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
        roles = {role: list(cluster[role]) for role in cluster}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG is not usable ({e!r}): {TF_CONFIG_HELP}") from None
    if set(roles) - {"chief", "worker"}:
        raise ValueError(f"TF_CONFIG: only chief and worker tasks take part in MultiWorkerMirroredStrategy, "
                         f"not {', '.join(sorted(set(roles) - {'chief', 'worker'}))}")
    if task_type not in roles or not 0 <= task_index < len(roles[task_type]):
        raise ValueError(f"TF_CONFIG: task {task_type} {task_index} is not in the cluster "
                         f"({', '.join(f'{r}: {len(a)}' for r, a in roles.items())})")
    chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and "chief" not in roles)
    return Placement(sum(len(a) for a in roles.values()), task_type, task_index, chief)


def strategy(distribute: str, cpu_devices: int = 1,
             tf_config: str | None = None) -> tuple[tf.distribute.Strategy, Placement]:
    """The strategy for ``distribute`` (one of DISTRIBUTE) and this process's placement. Call before
    TensorFlow runs anything: both the logical CPUs and the multi-worker runtime must come first."""
    if distribute not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTE)}, not {distribute!r}")
    if distribute == "multi-worker" and cpu_devices > 1:
        raise ValueError("--cpu-devices applies to --distribute mirrored; a worker of multi-worker "
                         "training uses its GPUs, else one CPU device")
    place = placement_from_tf_config(tf_config) if distribute == "multi-worker" else Placement()
    import tensorflow as tf  # after the checks: they need no TensorFlow

    if distribute == "multi-worker":
        log.info("worker %s %d of %d workers%s", place.task_type, place.task_index, place.workers,
                 " (chief)" if place.chief else "")
        return tf.distribute.MultiWorkerMirroredStrategy(), place
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    if distribute == "none":
        return tf.distribute.get_strategy(), place
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices), place


@contextmanager
def output_directory(run_dir: Path, place: Placement) -> Iterator[Path]:
    """``run_dir`` for the chief; for another worker a temporary directory, removed on leaving."""
    if place.chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"cloud-trainer-{place.task_type}{place.task_index}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
