"""The trainer's errors, grouped by fault.

- :class:`BadInput`: what was given cannot be used (a data file, a setting, a run, a release
  asked for); fix the input and run again.
- :class:`GateRefusal`: the model was built, but a gate refused to ship it (parity with the
  float model, the quantization quality gate); ``--force`` bundles it anyway.
- :class:`TransportError`: the broker cannot be reached, refused the connection, did not
  confirm a message or does not hold what it should.

The bad-input and transport roots are those of :mod:`shared.errors` too. ``cloud-trainer`` exits
with status 2 for bad input and transport errors, 3 for a refusal (see
:func:`cloud_trainer.cli.main`).
"""

from __future__ import annotations

from shared import errors as shared_errors


class TrainerError(Exception):
    """Root of the trainer's own errors."""


class BadInput(TrainerError, shared_errors.BadInput):
    """What was given cannot be used."""


class InputError(BadInput):
    """An input file cannot be used at all (missing, wrong columns, not text)."""


class TooManyItems(BadInput):
    """More items than the factorized model's dense item-item solve takes."""


class EvaluationError(BadInput):
    """A run cannot be evaluated on these events (no test period, or one it was trained on)."""


class ReleaseError(BadInput):
    """A release that cannot be made as asked: not a signed manifest, not released to the
    channel, no earlier version to go back to."""


class AssortmentError(BadInput):
    """A store's assortment that cannot be bundled: no item of it is in the run, an unreadable file."""


class GateRefusal(TrainerError, RuntimeError):
    """A gate refused the exported model."""


class ParityError(GateRefusal):
    """The exported model differs from the Keras model beyond the variant's tolerance."""


class QualityGateError(GateRefusal):
    """The exported model's Recall@20 fell too far below the float model's."""


class TransportError(TrainerError, shared_errors.TransportError, RuntimeError):
    """The broker: unreachable, refused the connection, did not confirm, does not hold the chunks."""
