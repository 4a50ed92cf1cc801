"""A tiny in-memory world for driving `decide` through whole scenarios without a cluster.

It applies a Decision the way the operator does (merge-patch the status, delete and create
pods) and lets a test play the kubelet (make a pod ready, finish a deletion) and the clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from tradingbot_operator.decide import Decision, decide
from tradingbot_operator.decide_facts import (
    BotFacts,
    FieldChange,
    OperatorLimits,
    PodFacts,
    RestartPolicy,
)
from tradingbot_operator.decide_outcome import CreatePod, DeletePod

T0 = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class World:
    def __init__(self, name: str = "bot-a", desired: str = "h1", **policy: Any) -> None:
        self.now = T0
        self.bot = BotFacts(
            namespace="ns",
            name=name,
            desired_hash=desired,
            status={},
            policy=RestartPolicy(**policy),
        )
        self.pods: list[PodFacts] = []
        self.decisions: list[Decision] = []
        self.limits = OperatorLimits()
        self._serial = 0

    # the operator ------------------------------------------------------------------------
    def step(self) -> Decision:
        d = decide(self.bot, list(self.pods), self.now, self.limits)
        self.decisions.append(d)
        self.bot = dataclasses.replace(self.bot, status=merge(dict(self.bot.status), d.status))
        for action in d.actions:
            if isinstance(action, DeletePod):
                self.pods = [
                    dataclasses.replace(p, deleting=True) if p.uid == action.uid else p
                    for p in self.pods
                ]
            elif isinstance(action, CreatePod):
                assert not self.pods, "created a pod while another exists"
                self._serial += 1
                self.pods.append(
                    PodFacts(
                        name=f"{self.bot.name}-{self._serial}",
                        uid=f"uid-{self._serial}",
                        config_hash=action.config_hash,
                        created_at=self.now,
                    )
                )
        return d

    def settle(self, max_steps: int = 20) -> None:
        """Run the kubelet and the operator until nothing changes (pods become ready)."""
        for _ in range(max_steps):
            self.finish_deletions()
            self.make_ready()
            d = self.step()
            if not d.actions and not d.status:
                return
        raise AssertionError("did not settle")

    # the world ---------------------------------------------------------------------------
    def edit(self, desired: str, *changes: str) -> None:
        self.bot = dataclasses.replace(
            self.bot,
            desired_hash=desired,
            changes=tuple(FieldChange(c, "old", "new") for c in changes),
        )

    def set(self, **fields: Any) -> None:
        self.bot = dataclasses.replace(self.bot, **fields)

    def tick(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def make_ready(self) -> None:
        self.pods = [dataclasses.replace(p, ready=True) if not p.deleting else p for p in self.pods]

    def crash(self, restarts: int = 3) -> None:
        self.pods = [dataclasses.replace(p, ready=False, restart_count=restarts) for p in self.pods]

    def finish_deletions(self) -> None:
        self.pods = [p for p in self.pods if not p.deleting]

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.bot.status)

    @property
    def phase(self) -> str | None:
        return self.bot.status.get("phase")

    def reasons(self) -> list[str]:
        return [e.reason for d in self.decisions for e in d.events]

    def deletes(self) -> int:
        return sum(isinstance(a, DeletePod) for d in self.decisions for a in d.actions)

    def creates(self) -> int:
        return sum(isinstance(a, CreatePod) for d in self.decisions for a in d.actions)


def running_world(**policy: Any) -> World:
    world = World(**policy)
    world.settle()
    assert world.phase == "Running"
    world.decisions.clear()
    return world
