"""Every error the shared contracts raise, grouped by fault under five roots.

::

    UpdateRejected        an update is not acceptable (``reason``: a short code for the status)
      BundleError           the remote data: manifest, envelope, chunk or bundle file
        SignatureError        the envelope is malformed or its signature does not verify
        MalformedManifest, WrongFleet, IncompatibleContract, ExpiredManifest, RollbackRejected,
        NotTargeted, TooLarge, ChunkRejected, NotReleased, Revoked, CatalogError
    StorageError          a disk or a store failed (raised by the sides: nothing shared does I/O)
    TransportError        the broker or the network failed (raised by the sides)
    ModelRuntimeError     a model does not load, or does not answer as its contract says
      ScoringFailed         a model failed one query
    BadInput              data from a client, a file or an operator is not acceptable
      JsonRejected          not bounded, acceptable JSON
      EventError            not an event, an id or a timestamp

Each leaf keeps the built-in base it always had (``ValueError``, ``RuntimeError``), so code that
catches those still does. The agent's and the trainer's own errors subclass these roots.
"""

from __future__ import annotations


class UpdateRejected(ValueError):
    """An update is not acceptable. ``reason`` is a short machine-readable code for the status."""

    reason = "invalid"


class StorageError(Exception):
    """A disk or a store failed; the message names the cause and the fix."""


class TransportError(Exception):
    """The broker or the network failed."""


class ModelRuntimeError(RuntimeError):
    """A model does not load, or does not answer as its contract says."""


class BadInput(ValueError):
    """Data from a client, a file or an operator is not acceptable; the message says why."""


# -- the update was rejected -------------------------------------------------------------------
class BundleError(UpdateRejected):
    """Remote data is not acceptable as a bundle. ``reason`` is a short machine-readable code."""


class SignatureError(BundleError):
    """The envelope is malformed, signed by an unknown key, or its signature does not verify."""

    reason = "bad_signature"


class MalformedManifest(BundleError):
    """The signed text is not a manifest: not JSON, a field missing or of the wrong type."""

    reason = "malformed_manifest"


class WrongFleet(BundleError):
    reason = "wrong_fleet"  # the manifest names another fleet


class IncompatibleContract(BundleError):
    """Another manifest schema, or a model contract (version, variant, sizes) this agent cannot
    drive."""

    reason = "incompatible_contract"


class ExpiredManifest(BundleError):
    reason = "expired"  # past the manifest's ``expires``


class RollbackRejected(BundleError):
    """Not newer than the version serving: a replayed or stale manifest (a rollback to an
    earlier model is a new version re-delivering its files, see ``Manifest.rollback_of``)."""

    reason = "rollback"


class NotTargeted(BundleError):
    reason = "not_targeted"  # the manifest targets other devices


class TooLarge(BundleError):
    """The bundle is larger than ``model.max_bundle_bytes``."""

    reason = "too_large"


class ChunkRejected(BundleError):
    """A chunk or a file that does not match its length and sha256 in the manifest."""

    reason = "chunk_rejected"


class NotReleased(BundleError):
    """The version is not released to the rollout ring of this agent (a manifest copied to the
    topic of another ring, e.g. a canary version replayed to stable agents)."""

    reason = "not_released"


class Revoked(BundleError):
    """A signed, later release revoked this version (an aborted rollout)."""

    reason = "revoked"


class CatalogError(BundleError):
    """The catalog file of a bundle is not acceptable (a bundle file, not the manifest)."""

    reason = "bad_catalog"


# -- model runtime -----------------------------------------------------------------------------
class ScoringFailed(ModelRuntimeError):
    """Raised by a scorer whose model answered garbage: the shopper gets the popularity fallback."""


# -- bad input ---------------------------------------------------------------------------------
class JsonRejected(BadInput):
    """Not JSON, or JSON nested deeper or with larger numbers than accepted."""


class EventError(BadInput):
    """A field of an event is missing or invalid; the message names the field."""


# -- signed fleet documents other than manifests (shared.fleet_documents) ------------------------
class MalformedDocument(UpdateRejected):
    """The signed text is not an acceptable rules or erasure document; the message names the field."""

    reason = "malformed"
