"""Durable, tamper-evident audit log (SPEC §6).

Write with `open_writer(log_dir)` (one writer process per directory); read with `query`,
`summary`, `export_json`; check integrity with `verify_log`. The same operations are on the
command line: `python -m tradingbot_audit --log-dir DIR {query,summary,export,verify}`.

In a cluster the log has one writer, the sidecar (`... serve`, module `serve`); the operator
and the bots send it events with `tradingbot_api.audit_http.AuditClient`. Neither is imported
here, so the library and the
read-only commands do not load aiohttp or the Kubernetes client.
"""

from __future__ import annotations

from .chain import GENESIS_HASH, ChainState, canonical_json, compute_hash
from .dedup import DEFAULT_DEDUP_WINDOW
from .errors import AuditLogCorruptError, AuditLogError, AuditWriteError, WriterLockedError
from .metrics import AuditHooks, PrometheusHooks, WriterCounters
from .reader import AuditFilter, Summary, export_json, iter_records, query, summarize, summary
from .schema import (
    KNOWN_EVENT_TYPES,
    KNOWN_SOURCES,
    SEVERITIES,
    AuditSchemaError,
    normalize_event,
    redact_secrets,
)
from .verify import VerifyError, VerifyResult, verify_lines, verify_log
from .writer import DEFAULT_MAX_FILE_BYTES, AppendResult, AuditWriter, open_writer

__all__ = [
    "DEFAULT_DEDUP_WINDOW",
    "DEFAULT_MAX_FILE_BYTES",
    "GENESIS_HASH",
    "KNOWN_EVENT_TYPES",
    "KNOWN_SOURCES",
    "SEVERITIES",
    "AppendResult",
    "AuditFilter",
    "AuditHooks",
    "AuditLogCorruptError",
    "AuditLogError",
    "AuditSchemaError",
    "AuditWriteError",
    "AuditWriter",
    "ChainState",
    "PrometheusHooks",
    "Summary",
    "VerifyError",
    "VerifyResult",
    "WriterCounters",
    "WriterLockedError",
    "canonical_json",
    "compute_hash",
    "export_json",
    "iter_records",
    "normalize_event",
    "open_writer",
    "query",
    "redact_secrets",
    "summarize",
    "summary",
    "verify_lines",
    "verify_log",
]
