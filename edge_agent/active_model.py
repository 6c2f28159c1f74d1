"""The model serving requests, and what the status says about updates.

Reading ``current`` is one atomic reference load: the update worker swaps the model by replacing
it, and requests in flight keep the model object they started with.
"""

from __future__ import annotations

from edge_agent.loaded_model import LoadedModel
from edge_agent.update_report import Discarded, UpdateResult


class ActiveModel:
    """Holds the model serving requests; reading ``current`` is one atomic reference load."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.last_update: UpdateResult | None = None  # genuine updates only (see Discarded)
        self.discarded = Discarded()

    @property
    def version(self) -> int | None:
        current = self.current
        return current.version if current is not None else None
