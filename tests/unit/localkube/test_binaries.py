"""Locating the control-plane binaries: cache layout, envtest override, version stamping."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest

from localkube import binaries


def _load_gomod_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen_kube_gomod", binaries.TOOLS_DIR / "gen_kube_gomod.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cache_is_keyed_by_component_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kube = next(c for c in binaries.components() if c.name == "kubernetes")
    version = binaries.read_versions()["KUBERNETES_VERSION"]
    assert binaries.bin_dir(kube) == tmp_path / "tradingbot-operator" / "bin" / (
        f"kubernetes-v{version}"
    )


def test_kube_apiserver_is_stamped_with_the_pinned_version() -> None:
    kube = binaries.components(
        {"KUBERNETES_VERSION": "1.37.2", "ETCD_VERSION": "3.6.16", "HELM_VERSION": "3.22.0"}
    )[1]
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in kube.ldflags
    assert "-X k8s.io/component-base/version.gitMinor=37" in kube.ldflags
    assert kube.programs == ("kube-apiserver", "kubectl")


def test_kubebuilder_assets_wins_over_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    fake = assets / "etcd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert binaries.find_binary("etcd") == fake
    assert binaries.find_binary("kube-apiserver") is None


def test_a_missing_binary_names_the_command_that_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make tools"):
        binaries.require_binary("kube-apiserver")


def test_unknown_components_are_refused() -> None:
    with pytest.raises(SystemExit, match="unknown component"):
        binaries.ensure(["kubelet"])


def test_gomod_generator_replaces_every_staging_module_with_its_published_version() -> None:
    gen = _load_gomod_generator()
    upstream = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tgithub.com/google/uuid v1.6.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/some/fork => github.com/other/fork v1.0.0
)
"""
    rendered = gen.render("1.37.2", upstream)
    assert "require k8s.io/kubernetes v1.37.2" in rendered
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in rendered
    assert "\tk8s.io/client-go => k8s.io/client-go v0.37.2" in rendered
    assert "github.com/some/fork" not in rendered
    assert "go 1.26.0" in rendered


def test_committed_kube_gomod_replaces_the_same_modules_as_the_generator_would() -> None:
    gomod = (binaries.TOOLS_DIR / "kube" / "go.mod").read_text()
    version = binaries.read_versions()["KUBERNETES_VERSION"]
    _, minor, patch = version.split(".")
    replaced = [
        line.split()[0]
        for line in gomod.splitlines()
        if "=> k8s.io/" in line and line.strip().endswith(f"v0.{minor}.{patch}")
    ]
    assert len(replaced) == 33
    assert f"k8s.io/kubernetes v{version}" in gomod
