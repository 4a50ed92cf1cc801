"""Locate or build the control-plane binaries (etcd, kube-apiserver, kubectl, helm).

Binaries live in a per-version cache outside the repository
(``$XDG_CACHE_HOME/tradingbot-operator/bin/<component>-v<version>/``), so a fresh clone reuses
what an earlier build left and a version bump rebuilds only that component. A directory named
by ``KUBEBUILDER_ASSETS`` (the envtest convention) wins over the cache for the binaries it holds.

Only the standard library is used: this module runs before the project's virtualenv exists.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / "tools"


def read_versions(path: Path = TOOLS_DIR / "versions.env") -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


@dataclass(frozen=True)
class Component:
    """One Go wrapper module under tools/ and the programs it builds."""

    name: str
    version: str
    module_dir: Path
    packages: tuple[str, ...]  # Go import paths of main packages, in build order
    programs: tuple[str, ...]  # resulting binary names, same order as packages
    ldflags: str = ""
    # Part of the cache key beside the version, for a build whose flags changed (so a cached
    # binary built without them is not reused).
    build_tag: str = ""

    @property
    def cache_key(self) -> str:
        suffix = f"-{self.build_tag}" if self.build_tag else ""
        return f"{self.name}-v{self.version}{suffix}"


def components(versions: dict[str, str] | None = None) -> list[Component]:
    v = versions or read_versions()
    kube = v["KUBERNETES_VERSION"]
    major, minor, _ = kube.split(".")
    kube_ldflags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (
            ("gitVersion", f"v{kube}"),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )
    helm = v["HELM_VERSION"]
    return [
        Component(
            name="etcd",
            version=v["ETCD_VERSION"],
            module_dir=TOOLS_DIR / "etcd",
            packages=("go.etcd.io/etcd/server/v3",),
            programs=("etcd",),
        ),
        Component(
            name="kubernetes",
            version=kube,
            module_dir=TOOLS_DIR / "kube",
            packages=("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"),
            programs=("kube-apiserver", "kubectl"),
            ldflags=kube_ldflags,
        ),
        Component(
            name="helm",
            version=helm,
            module_dir=TOOLS_DIR / "helm",
            packages=("helm.sh/helm/v3/cmd/helm",),
            programs=("helm",),
            # As helm's own Makefile: the Kubernetes version it assumes without a cluster
            # (`helm template`, `helm lint`) is the one it is built against, not v1.20.
            ldflags=" ".join(
                [f"-X helm.sh/helm/v3/internal/version.version=v{helm}"]
                + [
                    f"-X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}={value}"
                    for pkg in ("chartutil", "lint/rules")
                    for part, value in (("Major", major), ("Minor", minor))
                ]
            ),
            build_tag=f"k8s{major}.{minor}",
        ),
    ]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tradingbot-operator"


def bin_dir(component: Component) -> Path:
    return cache_root() / "bin" / component.cache_key


def find_binary(program: str) -> Path | None:
    """Path of an already available program, without building anything."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / program).is_file():
        return Path(assets) / program
    for comp in components():
        if program in comp.programs:
            candidate = bin_dir(comp) / program
            return candidate if candidate.is_file() else None
    raise KeyError(f"unknown program {program!r}")


def require_binary(program: str) -> Path:
    path = find_binary(program)
    if path is None:
        raise FileNotFoundError(
            f"{program} is not built yet; run `make tools` (it builds the pinned control-plane "
            "binaries into the cache once) or point KUBEBUILDER_ASSETS at a directory holding it"
        )
    return path


def _log(message: str) -> None:
    print(f"[tools] {message}", file=sys.stderr, flush=True)


@contextmanager
def _build_lock(comp: Component) -> Iterator[None]:
    lock_path = cache_root() / "locks" / f"{comp.cache_key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"another process is building {comp.cache_key}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = "-mod=readonly"  # go.sum is committed: builds never edit the repo
    return env


def _count_packages(comp: Component, env: dict[str, str]) -> int:
    """Number of packages `go build` may compile, for an n/N progress display."""
    result = subprocess.run(
        ["go", "list", "-deps", *comp.packages],
        cwd=comp.module_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"go list failed for {comp.cache_key} (see above)")
    return len(set(result.stdout.split()))


def _build(comp: Component) -> None:
    if shutil.which("go") is None:
        raise SystemExit(
            "Go is not installed (no `go` on PATH). Install Go 1.26 or newer, or set "
            "KUBEBUILDER_ASSETS to a directory that already has etcd, kube-apiserver and kubectl."
        )
    env = _go_env()
    target = bin_dir(comp)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    total = _count_packages(comp, env)
    _log(
        f"building {comp.cache_key} ({', '.join(comp.programs)}): up to {total} packages; "
        "a cold build of kubernetes takes tens of minutes on 2 cores"
    )
    started = time.monotonic()
    for package, program in zip(comp.packages, comp.programs, strict=True):
        cmd = ["go", "build", "-v", "-trimpath", "-o", str(staging / program)]
        if comp.ldflags:
            cmd += ["-ldflags", f"-s -w {comp.ldflags}"]
        else:
            cmd += ["-ldflags", "-s -w"]
        cmd.append(package)
        proc = subprocess.Popen(
            cmd, cwd=comp.module_dir, env=env, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        assert proc.stderr is not None
        compiled = 0
        last_report = 0.0
        tail: list[str] = []
        for line in proc.stderr:
            line = line.rstrip()
            tail = ([*tail, line])[-40:]
            if line and not line.startswith(("#", " ", "go: ")):
                compiled += 1
            now = time.monotonic()
            if now - last_report >= 10:
                last_report = now
                _log(
                    f"{program}: compiled {compiled}/{total} packages, "
                    f"{int(now - started)}s elapsed, last: {line[:80]}"
                )
        if proc.wait() != 0:
            sys.stderr.write("\n".join(tail) + "\n")
            raise SystemExit(f"go build of {package} failed (last output above)")
        _log(f"built {program} in {int(time.monotonic() - started)}s")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: an interrupted build never looks cached


def ensure(selected: list[str] | None = None) -> dict[str, Path]:
    """Build whatever is missing from the cache; return program -> path."""
    known = {comp.name for comp in components()}
    unknown = sorted(set(selected or ()) - known)
    if unknown:
        raise SystemExit(f"unknown component(s) {', '.join(unknown)}; known: {sorted(known)}")
    paths: dict[str, Path] = {}
    for comp in components():
        if selected and comp.name not in selected:
            continue
        missing = [p for p in comp.programs if find_binary(p) is None]
        if missing:
            with _build_lock(comp):
                if any(find_binary(p) is None for p in comp.programs):
                    _build(comp)
        for program in comp.programs:
            paths[program] = require_binary(program)
            _log(f"{program}: {paths[program]}")
    return paths
