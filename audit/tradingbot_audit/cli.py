"""`python -m tradingbot_audit --log-dir DIR {serve,query,summary,export,verify,append}`.

Exit codes: 0 success; 1 verification failed or the operation failed (message on stderr);
2 bad arguments. `serve` runs the audit sidecar (see serve.py) until SIGTERM.

`verify --head SEQ:HASH` or `verify --head-configmap NAMESPACE/NAME` also checks the log
against the chain head recorded outside the log volume (head.py), which is what notices lines
deleted from the end of the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

from tradingbot_api.kubeclient import KubeClient, KubeError

from .errors import AuditLogError
from .head import (
    ChainHead,
    ConfigMapHeadStore,
    HeadStoreError,
    parse_configmap_ref,
    parse_head,
)
from .reader import AuditFilter, export_json, parse_time_arg, query, summary
from .schema import SEVERITIES
from .tables import audit_table, count_table
from .verify import verify_log
from .writer import DEFAULT_MAX_FILE_BYTES, open_writer

LOG_DIR_ENV: Final = "TRADINGBOT_AUDIT_LOG_DIR"


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (repeat an option to match any of its values)")
    group.add_argument(
        "--type",
        dest="event_type",
        action="append",
        metavar="T",
        help="event type, e.g. restart, config_change, trade",
    )
    group.add_argument("--severity", action="append", choices=SEVERITIES)
    group.add_argument(
        "--source", action="append", metavar="S", help="kubectl, gitops, plugin, operator, bot, ..."
    )
    group.add_argument(
        "--bot",
        "--target",
        dest="target",
        action="append",
        metavar="B",
        help="target bot (or symbol)",
    )
    group.add_argument("--user", dest="user_id", action="append", metavar="U")
    group.add_argument("--namespace", "-n", action="append", metavar="NS")
    group.add_argument(
        "--since",
        metavar="TIME",
        help="inclusive lower bound: ISO 8601 (UTC if no offset) or 30m, 24h, 7d",
    )
    group.add_argument("--until", metavar="TIME", help="exclusive upper bound, same forms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tradingbot_audit",
        description="Query, summarise, export and verify the hash-chained audit log.",
    )
    parser.add_argument(
        "--log-dir",
        default=os.environ.get(LOG_DIR_ENV),
        required=LOG_DIR_ENV not in os.environ,
        type=Path,
        help=f"audit log directory (default: ${LOG_DIR_ENV})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    query_cmd = commands.add_parser("query", help="matching events, most recent first")
    _add_filters(query_cmd)
    query_cmd.add_argument(
        "--limit", type=int, default=100, help="at most N events (default 100; 0 for all)"
    )
    query_cmd.add_argument(
        "--oldest-first", action="store_true", help="chain order instead of most recent first"
    )
    query_cmd.add_argument("-o", "--output", choices=("table", "json"), default="table")

    summary_cmd = commands.add_parser("summary", help="counts by type, severity, source, bot")
    _add_filters(summary_cmd)
    summary_cmd.add_argument("-o", "--output", choices=("table", "json"), default="table")

    export_cmd = commands.add_parser("export", help="matching events as one JSON array")
    export_cmd.add_argument("file", metavar="FILE", help="output file, or - for stdout")
    _add_filters(export_cmd)

    verify_cmd = commands.add_parser(
        "verify", help="check the hash chain; exit 1 at the first bad line"
    )
    verify_cmd.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        help="check files in N processes (0: one per CPU); the report is the same",
    )
    head = verify_cmd.add_mutually_exclusive_group()
    head.add_argument(
        "--head",
        metavar="SEQ:HASH",
        help="also check against this chain head: the log must reach SEQ and hold HASH there",
    )
    head.add_argument(
        "--head-configmap",
        metavar="NAMESPACE/NAME",
        help="also check against the chain head the sidecar records in this ConfigMap",
    )
    verify_cmd.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="for --head-configmap (default: in-cluster, else ~/.kube/config)",
    )

    append_cmd = commands.add_parser(
        "append", help="append JSON events read from stdin, one per line"
    )
    append_cmd.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    append_cmd.add_argument("--retention-days", type=int, default=None)

    serve_cmd = commands.add_parser(
        "serve", help="run the audit sidecar: the log's single writer and its HTTP API"
    )
    serve_cmd.add_argument(
        "--ingest-listen",
        default="127.0.0.1:8900",
        metavar="HOST:PORT",
        help="unauthenticated ingest for an operator in the same pod; keep it on loopback, "
        "or give an empty value for none (default 127.0.0.1:8900)",
    )
    serve_cmd.add_argument(
        "--operator-user",
        action="append",
        default=[],
        metavar="USER",
        help="a Kubernetes user (system:serviceaccount:NS:NAME) that may POST operator events "
        "to --listen with a token for the audience tradingbot-audit; repeatable",
    )
    serve_cmd.add_argument(
        "--listen",
        default="0.0.0.0:8901",
        metavar="HOST:PORT",
        help="bot ingest, read API, /healthz, /metrics (default 0.0.0.0:8901)",
    )
    serve_cmd.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="for TokenReview/SubjectAccessReview (default: in-cluster, else ~/.kube/config)",
    )
    serve_cmd.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    serve_cmd.add_argument("--retention-days", type=int, default=None)
    serve_cmd.add_argument("--tls-cert-file", metavar="PATH", help="serve --listen over TLS")
    serve_cmd.add_argument("--tls-key-file", metavar="PATH")
    serve_cmd.add_argument(
        "--auth-cache-seconds",
        type=float,
        default=10.0,
        help="how long token and permission checks are remembered (default 10)",
    )
    serve_cmd.add_argument(
        "--shutdown-timeout",
        type=float,
        default=20.0,
        help="seconds in-flight requests get after SIGTERM (default 20)",
    )
    serve_cmd.add_argument(
        "--head-configmap",
        metavar="NAMESPACE/NAME",
        help="record the chain head in this ConfigMap (created if absent) and refuse to "
        "append to a log that ends before the head recorded there",
    )
    serve_cmd.add_argument(
        "--head-interval",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="at most one head write starts per interval (default 0.2)",
    )
    serve_cmd.add_argument(
        "--accept-head-mismatch",
        action="store_true",
        help="continue a log that fails its check against the recorded head (the acceptance "
        "is written into the log as a critical event)",
    )
    serve_cmd.add_argument("--log-level", default="INFO")
    return parser


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the read-only commands should not pay for aiohttp and the kube client.
    import asyncio

    from tradingbot_api.logs import configure_logging

    from .serve import ServeOptions, run

    configure_logging(args.log_level)
    options = ServeOptions.from_args(args)
    asyncio.run(run(options))
    return 0


def _filter_from(args: argparse.Namespace, now: datetime) -> AuditFilter:
    return AuditFilter.build(
        event_type=args.event_type,
        severity=args.severity,
        source=args.source,
        target=args.target,
        user_id=args.user_id,
        namespace=args.namespace,
        since=None if args.since is None else parse_time_arg(args.since, now),
        until=None if args.until is None else parse_time_arg(args.until, now),
    )


def _cmd_query(args: argparse.Namespace, flt: AuditFilter, out: TextIO) -> int:
    if args.limit < 0:
        raise ValueError("--limit must be >= 0")
    records = query(args.log_dir, flt, limit=args.limit or None, oldest_first=args.oldest_first)
    if args.output == "json":
        json.dump(records, out, ensure_ascii=False, indent=2)
        out.write("\n")
    elif records:
        out.write(audit_table(records) + "\n")
    else:
        out.write("no matching events\n")
    return 0


def _cmd_summary(args: argparse.Namespace, flt: AuditFilter, out: TextIO) -> int:
    result = summary(args.log_dir, flt).to_json()
    if args.output == "json":
        json.dump(result, out, indent=2)
        out.write("\n")
        return 0
    out.write(
        f"{result['total']} events, seq {result['first_seq']}..{result['last_seq']}, "
        f"{result['first_timestamp']} .. {result['last_timestamp']}\n"
    )
    for title, key in (
        ("TYPE", "by_event_type"),
        ("SEVERITY", "by_severity"),
        ("SOURCE", "by_source"),
        ("TARGET", "by_target"),
    ):
        if result[key]:
            out.write("\n" + count_table(title, result[key]) + "\n")
    return 0


def _cmd_export(args: argparse.Namespace, flt: AuditFilter, out: TextIO, err: TextIO) -> int:
    if args.file == "-":
        count = export_json(args.log_dir, out, flt)
    else:
        target = Path(args.file)
        tmp = target.with_name(f".{target.name}.tmp")
        # Write beside the target and rename, so a failed export never leaves half a file.
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                count = export_json(args.log_dir, handle, flt)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        err.write(f"exported {count} events to {target}\n")
    return 0


def _verify_head(args: argparse.Namespace) -> ChainHead | None:
    if args.head:
        return parse_head(args.head)
    if not args.head_configmap:
        if args.kubeconfig:
            raise ValueError("--kubeconfig goes with --head-configmap")
        return None
    namespace, name = parse_configmap_ref(args.head_configmap)
    head = asyncio.run(_read_configmap_head(args.kubeconfig, namespace, name))
    if head is None:
        raise ValueError(f"configmap {namespace}/{name} does not exist or holds no chain head")
    return head


async def _read_configmap_head(
    kubeconfig: str | None, namespace: str, name: str
) -> ChainHead | None:
    try:
        client = KubeClient.from_environment(kubeconfig, user_agent="tradingbot-audit")
    except (KubeError, OSError) as exc:
        raise ValueError(f"no usable Kubernetes credentials: {exc}") from exc
    try:
        return await ConfigMapHeadStore(client, namespace, name).read()
    finally:
        await client.close()


def _cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    jobs = args.jobs if args.jobs > 0 else os.cpu_count() or 1
    # The head before the log: lines appended in between only make the log longer than it.
    head = _verify_head(args)
    result = verify_log(args.log_dir, jobs=jobs, head=head)
    out.write(result.summary() + "\n")
    return 0 if result.ok else 1


def _cmd_append(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    events: list[dict[str, Any]] = []
    for number, text in enumerate(stdin, start=1):
        if not text.strip():
            continue
        try:
            event = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"stdin line {number} is not JSON: {exc}") from exc
        if not isinstance(event, dict):
            raise ValueError(f"stdin line {number} is not a JSON object")
        events.append(event)
    with open_writer(
        args.log_dir, max_file_bytes=args.max_file_bytes, retention_days=args.retention_days
    ) as writer:
        results = writer.append_many(events)
    for result in results:
        out.write(
            json.dumps({"seq": result.seq, "hash": result.hash, "duplicate": result.duplicate})
            + "\n"
        )
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "append":
            return _cmd_append(args, stdin or sys.stdin, out)
        if args.command == "serve":
            return _cmd_serve(args)
        if not args.log_dir.is_dir():
            raise ValueError(f"{args.log_dir} is not a directory")
        if args.command == "verify":
            return _cmd_verify(args, out)
        flt = _filter_from(args, datetime.now(UTC))
        if args.command == "query":
            return _cmd_query(args, flt, out)
        if args.command == "summary":
            return _cmd_summary(args, flt, out)
        return _cmd_export(args, flt, out, err)
    except BrokenPipeError:
        raise  # the reader of our output went away (`| head`): __main__ exits quietly
    except (AuditLogError, HeadStoreError, ValueError, OSError) as exc:
        err.write(f"error: {exc}\n")
        return 1
