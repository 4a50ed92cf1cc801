"""Errors of the audit writer that are not input validation errors (those are
AuditSchemaError, a ValueError, in schema.py)."""

from __future__ import annotations


class AuditLogError(Exception):
    """Base class of writer errors that are not input validation errors."""


class WriterLockedError(AuditLogError):
    """Another writer holds the log directory."""


class AuditLogCorruptError(AuditLogError):
    """The log's tail cannot be continued safely; run `verify` to see why."""


class AuditWriteError(AuditLogError):
    """A write or fsync failed; the events of the failed chunk were not acknowledged."""
