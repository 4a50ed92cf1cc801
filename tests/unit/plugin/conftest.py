"""Fixtures of the plugin unit tests: loopback fakes of the API server and the audit API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.plugin.fakes import (
    FakeAuditApi,
    FakeKubeApi,
    running_fake_audit,
    running_fake_kube,
    write_kubeconfig,
)


@pytest.fixture
def fake_kube() -> Iterator[FakeKubeApi]:
    with running_fake_kube() as api:
        yield api


@pytest.fixture
def fake_audit() -> Iterator[FakeAuditApi]:
    with running_fake_audit() as api:
        yield api


@pytest.fixture
def kubeconfig_for(tmp_path: Path) -> Callable[..., Path]:
    def _make(server: str, **options: Any) -> Path:
        return write_kubeconfig(tmp_path / "kubeconfig", server, **options)

    return _make
