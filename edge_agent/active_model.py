"""The model serving requests, the holdout's control, and what the status says about updates.

Reading ``current`` is one atomic reference load: the update worker swaps the model by replacing
it, and requests in flight keep the model object they started with.

With ``experiment.control = "previous"`` the model a new version replaces stays loaded as the
**control** the holdout shoppers are served (so a canary compares the new version with the one
before it, on the same shoppers at the same time), unless that version was revoked: after a
rollback the control stays the last good one.
"""

from __future__ import annotations

from collections.abc import Collection

from edge_agent.loaded_model import LoadedModel
from edge_agent.update_report import Discarded, UpdateResult


class ActiveModel:
    """Holds the model serving requests; reading ``current`` is one atomic reference load."""

    def __init__(self, keep_control: bool = False) -> None:
        self.current: LoadedModel | None = None
        self.control: LoadedModel | None = None  # what holdout shoppers get (None: the popular items)
        self.keep_control = keep_control
        self.last_update: UpdateResult | None = None  # genuine updates only (see Discarded)
        self.discarded = Discarded()

    def replace(self, model: LoadedModel, revoked: Collection[int]) -> None:
        """Serve ``model``; the one it replaces becomes the control (see the module's docstring)."""
        old = self.current
        if self.keep_control and old is not None and old.version != model.version and old.version not in revoked:
            self.control = old
        if self.control is not None and (self.control.version in revoked or self.control.version == model.version):
            self.control = None
        self.current = model

    @property
    def version(self) -> int | None:
        current = self.current
        return current.version if current is not None else None
