"""`python -m localkube {up,down,env,tools}`: the embedded local cluster's command line."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from localkube import binaries
from localkube.cluster import DEFAULT_DATA_DIR, ClusterError, ClusterState, LocalCluster


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).resolve()


def cmd_up(args: argparse.Namespace) -> int:
    binaries.ensure(["etcd", "kubernetes"])
    started = time.monotonic()
    cluster = LocalCluster(_data_dir(args), die_with_parent=False)
    try:
        cluster.start(timeout=args.timeout)
    except ClusterError as err:
        print(f"localkube: {err}", file=sys.stderr)
        return 1
    print(
        f"localkube: API server {cluster.server} ready in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    if args.node:
        pid = cluster.start_node_process()
        print(
            f"localkube: process node running (pid {pid}, log {cluster.logs / 'node.log'})",
            file=sys.stderr,
        )
    print(cluster.kubeconfig)
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    """Run the process node in the foreground until SIGTERM or Ctrl-C. Its pods' processes
    outlive it (a restarted node adopts them) but not the cluster's etcd or API server."""
    from localkube import procfs
    from localkube.heartbeat import NODE_LEASE_DURATION_SECONDS
    from localkube.node import NodeBusyError, ProcessNode

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cluster = LocalCluster(_data_dir(args), die_with_parent=False)
    state = cluster.state_from_disk()
    if state is None or not state.running():
        print(
            "localkube: the control plane is not running; `python -m localkube up` first",
            file=sys.stderr,
        )
        return 1
    cluster.state = state
    # The pods live as long as the control plane: etcd too, since an API server whose etcd
    # died with their owner can hang in its shutdown for a long while.
    anchors = [procfs.identify(state.apiserver_pid), procfs.identify(state.etcd_pid)]
    if None in anchors:
        print("localkube: the control plane just went away", file=sys.stderr)
        return 1
    try:
        node = ProcessNode(
            cluster.kubeconfig,
            Path(args.node_dir).resolve() if args.node_dir else cluster.data_dir / "node",
            server=cluster.server,
            ca_cert=cluster.pki.ca_cert,
            name=args.name,
            die_with_parent=False,
            namespaces=set(args.namespace) if args.namespace else None,
            anchors=[a for a in anchors if a is not None],
            lease_duration_seconds=args.lease_duration or NODE_LEASE_DURATION_SECONDS,
        ).start()
    except NodeBusyError as err:
        print(f"localkube: {err}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    node.stop()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if ClusterState.load(data_dir) is None:
        print(f"localkube: nothing running for {data_dir}", file=sys.stderr)
        return 0
    LocalCluster(data_dir, die_with_parent=False).stop()
    print("localkube: stopped", file=sys.stderr)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    state = ClusterState.load(data_dir)
    if state is None or not state.running():
        print(
            f"localkube: not running for {data_dir}; start it with `python -m localkube up`",
            file=sys.stderr,
        )
        return 1
    kubectl = binaries.find_binary("kubectl")
    print(f"export KUBECONFIG={shlex.quote(state.kubeconfig)}")
    if kubectl is not None:
        print(f'export PATH={shlex.quote(str(kubectl.parent))}:"$PATH"')
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from localkube.run import main as run_main

    return run_main(_data_dir(args), args.duration)


def cmd_tools(args: argparse.Namespace) -> int:
    binaries.ensure(args.component or None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localkube", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (
        ("up", cmd_up, "start etcd + kube-apiserver; print the kubeconfig path"),
        ("down", cmd_down, "stop everything `up` started"),
        ("env", cmd_env, "print shell exports (KUBECONFIG, PATH with kubectl)"),
        ("node", cmd_node, "run the process node in the foreground"),
        ("run", cmd_run, "the product: cluster, node, operator, sample bots, status table"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--data-dir",
            default=str(DEFAULT_DATA_DIR),
            help="cluster data (etcd, certificates, kubeconfig); default .local/",
        )
        cmd.set_defaults(func=func)
        if name == "up":
            cmd.add_argument(
                "--timeout", type=float, default=90.0, help="seconds to wait for readiness"
            )
            cmd.add_argument(
                "--node",
                action="store_true",
                help="also run the process node that runs pods as processes",
            )
        if name == "node":
            cmd.add_argument("--name", default="localkube-node", help="the Node's name")
            cmd.add_argument(
                "--node-dir",
                default=None,
                help="the node's own data (pod dirs, container records); default DATA_DIR/node",
            )
            cmd.add_argument(
                "--namespace",
                action="append",
                default=[],
                help="run only pods of this namespace (repeatable; default: every namespace)",
            )
            cmd.add_argument(
                "--lease-duration",
                type=int,
                default=None,
                help="seconds the node Lease lasts, renewed every quarter of it "
                "(default: localkube.heartbeat.NODE_LEASE_DURATION_SECONDS)",
            )
        if name == "run":
            cmd.add_argument(
                "--duration",
                type=float,
                default=None,
                help="stop by itself after this many seconds (default: Ctrl-C)",
            )
    tools = sub.add_parser("tools", help="build or locate the pinned control-plane binaries")
    tools.add_argument("component", nargs="*", help="etcd, kubernetes, helm (default: all)")
    tools.set_defaults(func=cmd_tools)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
