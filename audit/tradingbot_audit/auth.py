"""Who calls the sidecar's main listener, and what they may do.

A bearer token is checked with a TokenReview; reads are then authorized with a
SubjectAccessReview for `get` on `tradingbots/audit` (per namespace asked for); a bot's
ServiceAccount `tradingbot-<bot>` is recognised by its name. Answers are cached for a few
seconds. The sidecar's ServiceAccount needs the `system:auth-delegator` ClusterRole (create
tokenreviews and subjectaccessreviews).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from cachetools import TTLCache

from tradingbot_api.constants import API_GROUP, PLURAL
from tradingbot_api.kubeclient import KubeClient, KubeError

from .head import KubeRequester

AUTH_CACHE_SECONDS: Final = 10.0
AUTH_REQUEST_TIMEOUT: Final = 5.0
AUTH_CACHE_ENTRIES: Final = 4096

SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"
# A bot's pods run as ServiceAccount `tradingbot-<bot>` (render.service_account_name).
BOT_ACCOUNT_PREFIX: Final = "tradingbot-"


@dataclass(frozen=True)
class Identity:
    """An authenticated Kubernetes user, as TokenReview reports it (hashable: a cache key)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class AccessCheck:
    """The resource attributes of a SubjectAccessReview; namespace None is cluster-wide."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str | None = None

    def describe(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {resource}.{self.group} {where}"


AUDIT_READ: Final = AccessCheck(verb="get", group=API_GROUP, resource=PLURAL, subresource="audit")


class AuthUnavailableError(Exception):
    """The API server could not answer a TokenReview or SubjectAccessReview (503, not 401)."""


class Authorizer(Protocol):
    """Who is calling and what they may do. The real one asks the API server; tests fake it."""

    async def authenticate(self, token: str, audiences: Sequence[str] = ()) -> Identity | None:
        """The token's user, or None when the token is invalid or expired (or, with
        `audiences`, not issued for any of them)."""
        ...

    async def allowed(self, identity: Identity, check: AccessCheck) -> bool:
        """Whether RBAC (or the cluster's authorizer chain) allows `check` for `identity`."""
        ...


def token_review_body(token: str, audiences: Sequence[str] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def identity_from_token_review(
    review: Mapping[str, Any], audiences: Sequence[str] = ()
) -> Identity | None:
    status = review.get("status") or {}
    if not status.get("authenticated"):
        return None
    # The API server answers with the audiences the token shares with those asked for; an
    # authenticator that ignores audiences answers with none, and must not pass.
    if audiences and not set(status.get("audiences") or ()) & set(audiences):
        return None
    user = status.get("user") or {}
    username = user.get("username")
    if not isinstance(username, str) or not username:
        return None
    extra = user.get("extra") or {}
    return Identity(
        username=username,
        uid=str(user.get("uid") or ""),
        groups=tuple(str(group) for group in user.get("groups") or ()),
        extra=tuple(
            sorted((str(key), tuple(str(v) for v in values or ())) for key, values in extra.items())
        ),
    )


def access_review_body(identity: Identity, check: AccessCheck) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "verb": check.verb,
        "group": check.group,
        "resource": check.resource,
    }
    if check.subresource:
        attributes["subresource"] = check.subresource
    if check.namespace:
        attributes["namespace"] = check.namespace
    spec: dict[str, Any] = {
        "user": identity.username,
        "groups": list(identity.groups),
        "resourceAttributes": attributes,
    }
    if identity.uid:
        spec["uid"] = identity.uid
    if identity.extra:
        spec["extra"] = {key: list(values) for key, values in identity.extra}
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": spec,
    }


class KubeAuthorizer:
    """TokenReview and SubjectAccessReview against the API server, as raw JSON."""

    TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
    ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

    def __init__(
        self,
        api: KubeRequester,
        *,
        timeout: float = AUTH_REQUEST_TIMEOUT,
        audiences: Sequence[str] = (),
    ) -> None:
        self.api = api
        self.timeout = timeout
        self.audiences = tuple(audiences)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> KubeAuthorizer:
        """The given kubeconfig; else in-cluster credentials; else the default kubeconfig."""
        try:
            client = KubeClient.from_environment(kubeconfig, user_agent="tradingbot-audit")
        except (KubeError, OSError, ValueError) as exc:
            raise ValueError(f"no usable Kubernetes credentials: {exc}") from exc
        return cls(client)

    async def close(self) -> None:
        close = getattr(self.api, "close", None)
        if close is not None:
            await close()

    async def authenticate(self, token: str, audiences: Sequence[str] = ()) -> Identity | None:
        wanted = tuple(audiences) or self.audiences
        review = await self._post(self.TOKEN_REVIEWS, token_review_body(token, wanted))
        return identity_from_token_review(review, wanted)

    async def allowed(self, identity: Identity, check: AccessCheck) -> bool:
        review = await self._post(self.ACCESS_REVIEWS, access_review_body(identity, check))
        return bool((review.get("status") or {}).get("allowed"))

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        # Errors are reported without the request body: it carries the caller's token.
        try:
            parsed = await self.api.request("POST", path, body=dict(body), timeout=self.timeout)
        except KubeError as exc:
            if exc.status in (401, 403):
                raise AuthUnavailableError(
                    f"the API server refused POST {path} (HTTP {exc.status}); the audit "
                    "sidecar's ServiceAccount needs the system:auth-delegator ClusterRole"
                ) from None
            if exc.status:
                raise AuthUnavailableError(f"POST {path} answered HTTP {exc.status}") from None
            raise AuthUnavailableError(f"POST {path} failed: {exc.reason}: {exc.body}") from None
        except ValueError:
            raise AuthUnavailableError(f"POST {path} answered with something not JSON") from None
        except Exception as exc:
            raise AuthUnavailableError(f"POST {path} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(parsed, dict):
            raise AuthUnavailableError(f"POST {path} answered with a non-object")
        return parsed


_MISSING: Final = object()


class CachingAuthorizer:
    """Remembers TokenReview and SubjectAccessReview answers for a few seconds.

    Keeps query latency at one lookup instead of two API round trips. Denials and invalid
    tokens are cached too, so a client retrying with a bad token cannot turn the sidecar into
    a load generator against the API server. The cost: a revoked token or a removed
    RoleBinding takes up to `ttl` seconds to take effect. Tokens are keyed by their SHA-256,
    so no token is held in the cache.
    """

    def __init__(
        self,
        inner: Authorizer,
        *,
        ttl: float = AUTH_CACHE_SECONDS,
        max_entries: int = AUTH_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._identities: TTLCache[tuple[bytes, tuple[str, ...]], Identity | None] = TTLCache(
            max_entries, ttl, timer=clock
        )
        self._decisions: TTLCache[tuple[Identity, AccessCheck], bool] = TTLCache(
            max_entries, ttl, timer=clock
        )

    async def authenticate(self, token: str, audiences: Sequence[str] = ()) -> Identity | None:
        key = (hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest(), tuple(audiences))
        cached = self._identities.get(key, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        identity = await self.inner.authenticate(token, audiences)
        self._identities[key] = identity
        return identity

    async def allowed(self, identity: Identity, check: AccessCheck) -> bool:
        key = (identity, check)
        known = self._decisions.get(key)
        if known is not None:
            return known
        decision = bool(await self.inner.allowed(identity, check))
        self._decisions[key] = decision
        return decision


def bot_of(username: str) -> tuple[str, str] | None:
    """(namespace, bot) when `username` is a bot's ServiceAccount, else None."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    namespace, _, account = username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
    if not namespace or not account.startswith(BOT_ACCOUNT_PREFIX):
        return None
    bot = account[len(BOT_ACCOUNT_PREFIX) :]
    return (namespace, bot) if bot else None
