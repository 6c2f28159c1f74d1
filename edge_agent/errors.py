"""Every error the agent raises itself, under the fault roots of :mod:`shared.errors`.

::

    UpdateRejected (shared)     an update is not acceptable; ``reason`` goes into the status
      BundleError, SignatureError and the rest (shared: the remote data)
      ModelCrashed                this version killed the agent before: refused locally
    StorageError (shared)       a disk or a store failed
      StoreError, StoreFull       the history store
      KeyringError, WrongMasterKey  the keyring of users' data keys
      MasterKeyError              the device master key file
      TamperedRecord              a sealed record failed authentication
    ModelRuntimeError (shared)  a model does not load or does not answer as its contract says
      ModelLoadError, RuntimeMissing, ModelOutputError (a ScoringFailed)
    TransportError (shared)     the broker or the network failed
    BadInput (shared)           data from a client or the operator is not acceptable
      ConfigError, StartupError, ServiceInstallError

Outside the roots: :class:`UpdateOrderError` (a bug: a lifecycle step out of order) and
:class:`ApiError` (an answer the REST API gives as a JSON error, not a fault of its own).
Each class keeps the built-in base it had (``RuntimeError``, ``ValueError``) so callers that
catch those still do.
"""

from __future__ import annotations

import sqlite3

from shared.errors import BadInput, ModelRuntimeError, ScoringFailed, StorageError, TransportError, UpdateRejected


# -- the update was rejected -------------------------------------------------------------------
class ModelCrashed(UpdateRejected):
    """The version killed the agent while loading or on trial before: refused for good."""

    reason = "crashed"


class UpdateOrderError(RuntimeError):
    """A lifecycle step was taken out of order (a bug in the caller)."""


# -- storage -----------------------------------------------------------------------------------
class StoreError(StorageError, RuntimeError):
    """The store cannot be opened or written; the message names the cause and the fix."""


class StoreFull(StoreError):
    pass


def sqlite_storage_error(e: sqlite3.Error, what: str) -> StoreError:
    """The StoreError an SQLite error of the history store stands for, saying what to do."""
    text = str(e)
    if "full" in text:
        return StoreFull(f"cannot {what}: the disk (or the store's size limit) is full; free space and retry")
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return StoreError(f"cannot {what}: the history database is corrupt ({text}); restore it or move it away")
    return StoreError(f"cannot {what}: {text}")


class KeyringError(StorageError, RuntimeError):
    pass


class WrongMasterKey(KeyringError):
    pass


class MasterKeyError(StorageError, RuntimeError):
    """The master key file is unusable; the message says what to do."""


class TamperedRecord(StorageError, ValueError):
    """A ciphertext failed authentication: altered, moved, or sealed under another key."""


# -- model runtime -----------------------------------------------------------------------------
class ModelLoadError(ModelRuntimeError):
    """The model does not load, or does not answer as its contract says."""


class RuntimeMissing(ModelRuntimeError):
    """No TFLite runtime is installed."""


class ModelOutputError(ScoringFailed):
    """The model answered a query with garbage (indices out of range, scores not finite)."""


# -- bad input ---------------------------------------------------------------------------------
class ConfigError(BadInput):
    """A configuration problem; the message names the key and what is expected."""


class StartupError(BadInput, RuntimeError):
    """The agent cannot start; the message says what to fix."""


class ServiceInstallError(BadInput):
    """``edge-agent install-service`` cannot write the unit or the profile (exists, bad option, no access)."""


# -- the API's answers -------------------------------------------------------------------------
class ApiError(Exception):
    """An answer of the REST API as a JSON error: HTTP status, machine-readable code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# -- the origin failed ---------------------------------------------------------------------------
class OriginFailed(TransportError):
    """An origin (HTTP) request for bundle chunks failed: unreachable, a bad answer, wrong or too few
    bytes, too slow. The agent tries again, then takes the missing chunks from the broker."""
