"""The shared Kubernetes client: credentials and stream framing as plain functions, and its
retry of throttled requests against a scripted HTTP server."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tradingbot_api.kubeclient import (
    THROTTLED_ATTEMPTS,
    Credentials,
    KubeClient,
    KubeError,
    credentials_from_kubeconfig,
    credentials_in_cluster,
    load_credentials,
    retry_after,
    split_lines,
)


def write_config(path: Path, cluster: dict, user: dict, **context: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}, {"name": "other", "cluster": {}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u", **context}},
            {"name": "second", "context": {"cluster": "other", "user": "u"}},
        ],
        "current-context": "main",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_kubeconfig_inline_data_and_token(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config",
        {
            "server": "https://127.0.0.1:6443/",
            "certificate-authority-data": base64.b64encode(b"CA").decode(),
            "tls-server-name": "kubernetes",
        },
        {"token": "abc"},
        namespace="team-a",
    )
    creds = credentials_from_kubeconfig(path)
    assert creds.server == "https://127.0.0.1:6443"
    assert creds.ca_data == b"CA"
    assert creds.tls_server_name == "kubernetes"
    assert creds.namespace == "team-a"
    assert creds.bearer_token() == "abc"
    assert creds.verify


def test_kubeconfig_relative_files_resolve_against_its_directory(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(b"CA")
    (tmp_path / "pki" / "me.crt").write_bytes(b"CERT")
    (tmp_path / "pki" / "me.key").write_bytes(b"KEY")
    path = write_config(
        tmp_path / "config",
        {"server": "https://h:1", "certificate-authority": "pki/ca.crt"},
        {"client-certificate": "pki/me.crt", "client-key": str(tmp_path / "pki" / "me.key")},
    )
    creds = credentials_from_kubeconfig(path)
    assert (creds.ca_data, creds.cert_data, creds.key_data) == (b"CA", b"CERT", b"KEY")
    assert creds.bearer_token() is None


def test_named_context_and_unknown_context(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config", {"server": "https://h:1"}, {})
    assert credentials_from_kubeconfig(path, "second").server == ""
    with pytest.raises(KubeError, match="no context"):
        credentials_from_kubeconfig(path, "missing")


def test_insecure_skip_verify(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config", {"server": "https://h:1", "insecure-skip-tls-verify": True}, {}
    )
    context = credentials_from_kubeconfig(path).ssl_context()
    assert not isinstance(context, bool)
    assert not context.check_hostname


def test_plain_http_needs_no_tls() -> None:
    assert Credentials(server="http://127.0.0.1:8080").ssl_context() is False


def test_token_file_is_read_for_every_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    creds = Credentials(server="https://h:1", token_file=str(token))
    assert creds.bearer_token() == "first"
    token.write_text("rotated")
    assert creds.bearer_token() == "rotated"


def exec_plugin(tmp_path: Path, expiry: str | None) -> dict:
    """A client-go credential plugin that counts its runs."""
    counter = tmp_path / "runs"
    script = tmp_path / "plugin.py"
    status: dict = {"token": "from-plugin"}
    if expiry:
        status["expirationTimestamp"] = expiry
    answer = json.dumps({"kind": "ExecCredential", "status": status})
    script.write_text(
        "import os, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\n"
        "assert os.environ['PLUGIN_ENV'] == 'set'\n"
        f"print({answer!r})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {
        "command": sys.executable,
        "args": [str(script)],
        "env": [{"name": "PLUGIN_ENV", "value": "set"}],
    }


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_exec_plugin_token_is_cached_until_it_expires(tmp_path: Path) -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    creds = Credentials(server="https://h:1", exec_spec=exec_plugin(tmp_path, later))
    assert creds.bearer_token() == "from-plugin"
    assert creds.bearer_token() == "from-plugin"
    assert runs(tmp_path) == 1


def test_expired_exec_plugin_token_is_fetched_again(tmp_path: Path) -> None:
    past = "2000-01-01T00:00:00Z"
    creds = Credentials(server="https://h:1", exec_spec=exec_plugin(tmp_path, past))
    creds.bearer_token()
    creds.bearer_token()
    assert runs(tmp_path) == 2


def test_failing_exec_plugin_is_a_kube_error(tmp_path: Path) -> None:
    creds = Credentials(server="https://h:1", exec_spec={"command": "false"})
    with pytest.raises(KubeError, match="credential plugin failed"):
        creds.bearer_token()


def test_in_cluster_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ca.crt").write_bytes(b"CA")
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("bots\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = credentials_in_cluster(tmp_path)
    assert creds.server == "https://10.0.0.1:443"
    assert creds.namespace == "bots"
    assert creds.bearer_token() == "sa-token"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert credentials_in_cluster(tmp_path).server == "https://[fd00::1]:443"


def test_outside_a_cluster_without_kubeconfig_falls_back_to_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    write_config(tmp_path / ".kube" / "config", {"server": "https://home:1"}, {})
    assert load_credentials().server == "https://home:1"
    other = write_config(tmp_path / "other", {"server": "https://env:1"}, {})
    monkeypatch.setenv("KUBECONFIG", f"{other}:{tmp_path / 'ignored'}")
    assert load_credentials().server == "https://env:1"


@pytest.mark.parametrize(
    ("buffer", "lines", "rest"),
    [
        (b"", [], b""),
        (b'{"a":1}', [], b'{"a":1}'),
        (b'{"a":1}\n', [b'{"a":1}'], b""),
        (b'{"a":1}\n\n{"b":2}\n{"c"', [b'{"a":1}', b'{"b":2}'], b'{"c"'),
        (b"  \n{}\n", [b"{}"], b""),
    ],
)
def test_split_lines(buffer: bytes, lines: list[bytes], rest: bytes) -> None:
    assert split_lines(buffer) == (lines, rest)


def test_a_line_without_end_is_bounded() -> None:
    with pytest.raises(ValueError, match="larger than"):
        split_lines(b"x" * 11, limit=10)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"kind":"Status","message":"tradingbots.trading.r7.dev \\"a\\" not found"}',
            'tradingbots.trading.r7.dev "a" not found',
        ),
        ("plain text", "plain text"),
        ("[1]", "[1]"),
    ],
)
def test_error_message(body: str, message: str) -> None:
    err = KubeError(404, "Not Found", body)
    assert err.message == message
    assert err.not_found and not err.conflict and not err.gone


# -- 429: not processed, sent again after the wait the server asks for -------------------------

STORAGE_INITIALIZING = json.dumps(
    {
        "kind": "Status",
        "message": "storage is (re)initializing",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 1},
        "code": 429,
    }
)


@pytest.mark.parametrize(
    ("status", "header", "body", "wait"),
    [
        (429, "2", "", 2.0),
        (429, None, STORAGE_INITIALIZING, 1.0),
        (429, None, "not json", 1.0),  # no hint: a second
        (429, "soon", "", 1.0),
        (429, "3600", "", 5.0),  # capped: a halt must not wait an hour
        (429, "-3", "", 0.0),
        (409, "2", "", None),  # processed and refused: never sent again as is
        (500, "2", "", None),
        (503, None, STORAGE_INITIALIZING, None),
    ],
)
def test_retry_after(status: int, header: str | None, body: str, wait: float | None) -> None:
    assert retry_after(status, header, body) == wait


@pytest.fixture
async def scripted_server() -> Any:
    """An HTTP server that answers each request with the next (status, headers) of `script`."""
    from aiohttp import web

    script: list[tuple[int, dict[str, str]]] = []
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        status, headers = script.pop(0) if script else (200, {})
        text = json.dumps({"kind": "Status", "code": status} if status >= 400 else {"ok": True})
        return web.Response(status=status, text=text, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = KubeClient(Credentials(f"http://127.0.0.1:{port}"))
    yield client, script, seen
    await client.close()
    await runner.cleanup()


async def test_a_throttled_request_is_sent_again_and_succeeds(scripted_server: Any) -> None:
    client, script, seen = scripted_server
    script += [(429, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
    assert await client.request("PATCH", "/api/v1/x", body={"a": 1}) == {"ok": True}
    assert seen == ["PATCH /api/v1/x"] * 3


async def test_throttling_gives_up_after_the_attempts_or_the_budget(scripted_server: Any) -> None:
    client, script, seen = scripted_server
    script += [(429, {"Retry-After": "0"})] * 10
    with pytest.raises(KubeError) as exhausted:
        await client.request("GET", "/api/v1/x")
    assert exhausted.value.status == 429 and len(seen) == THROTTLED_ATTEMPTS
    seen.clear()
    script[:] = [(429, {"Retry-After": "1"})] * 10
    started = time.monotonic()
    with pytest.raises(KubeError):
        await client.request("GET", "/api/v1/x", timeout=1.5)
    assert time.monotonic() - started < 3.5 and len(seen) == 2  # never past its own budget


async def test_other_errors_are_not_sent_again(scripted_server: Any) -> None:
    client, script, seen = scripted_server
    script += [(409, {"Retry-After": "0"})]
    with pytest.raises(KubeError) as refused:
        await client.request("POST", "/api/v1/x", body={})
    assert refused.value.conflict and refused.value.retry_after is None and len(seen) == 1
