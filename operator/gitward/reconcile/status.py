"""What the operator knows about an app between attempts, and what an attempt decided: plain data.

``AppStatus`` is the app's status parsed once (anything malformed reads as
absent: someone else may have written it); ``Action``, ``Hold``,
``Outcome`` and ``Step`` are the vocabulary of :mod:`gitward.reconcile.decide`,
which must stay pure, so nothing here imports a client or starts a process.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef


class Step(enum.IntEnum):
    """The steps, in pipeline order."""

    RESOLVE = 1
    HEAD = 2
    FETCH = 3
    TRUST = 4
    RENDER = 5
    POLICY = 6
    DRY_RUN = 7
    APPLY = 8
    HEALTH = 9


class Action(enum.StrEnum):
    """What a reconcile decided to do."""

    SKIP = "skip"  # nothing changed since the last attempt: no apply, no status write
    HOLD = "hold"  # held at a rollback until the branch moves past the head seen then
    DEPLOY = "deploy"  # apply the branch head
    ROLLBACK = "rollback"  # apply spec.rollbackTo
    DRIFT = "drift"  # the live objects had drifted from the applied revision: corrected or reported


@dataclass(frozen=True, slots=True)
class Hold:
    """``status.rollback``: the app is held at a commit until the branch moves past ``held_at_head``."""

    commit: str
    held_at_head: str
    released: bool = False

    def to_status(self) -> dict[str, Any]:
        """The status field."""
        return {"commit": self.commit, "heldAtHead": self.held_at_head, "released": self.released}


@dataclass(frozen=True, slots=True)
class Applying:
    """``status.applying``: written before an apply adds objects, cleared when an apply completes.

    If the operator dies in between, the next attempt still knows those
    objects may exist (it prunes them if they left git) and records the
    interrupted attempt.
    """

    commit: str
    trigger: str
    started_at: str
    inventory: tuple[ObjectRef, ...]

    def to_status(self) -> dict[str, Any]:
        """The status field."""
        return {
            "commit": self.commit,
            "trigger": self.trigger,
            "startedAt": self.started_at,
            "inventory": [ref.to_inventory() for ref in self.inventory],
        }


def _refs(raw: object) -> tuple[ObjectRef, ...]:
    found = []
    for item in raw if isinstance(raw, Sequence) and not isinstance(raw, str) else ():
        try:
            found.append(ObjectRef.from_inventory(item))
        except (KeyError, TypeError, AttributeError):
            continue
    return tuple(found)


@dataclass(frozen=True, slots=True)
class AppStatus:
    """The app's status as the operator last wrote it (a view for people, read back for scheduling)."""

    raw: Mapping[str, Any]
    observed_generation: int | None = None
    last_attempted: str = ""  # only for scheduling (skip an attempted head); trust reads the records
    hold: Hold | None = None
    inventory: tuple[ObjectRef, ...] = ()
    applying: Applying | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> AppStatus:
        """Parse a status body; anything malformed reads as absent (someone else may have written it)."""
        raw = raw or {}
        held = raw.get("rollback")
        hold = None
        if isinstance(held, Mapping) and held.get("commit"):
            hold = Hold(str(held["commit"]), str(held.get("heldAtHead") or ""), bool(held.get("released")))
        pending = raw.get("applying")
        applying = None
        if isinstance(pending, Mapping) and pending.get("commit"):
            applying = Applying(
                str(pending["commit"]),
                str(pending.get("trigger") or "poll"),
                str(pending.get("startedAt") or ""),
                _refs(pending.get("inventory")),
            )
        generation = raw.get("observedGeneration")
        return cls(
            raw=raw,
            observed_generation=generation if isinstance(generation, int) else None,
            last_attempted=str(raw.get("lastAttemptedRevision") or ""),
            hold=hold,
            inventory=_refs(raw.get("inventory")),
            applying=applying,
        )

    @property
    def conditions(self) -> Sequence[Mapping[str, Any]]:
        """The stored conditions, as written."""
        found = self.raw.get("conditions") or ()
        return [c for c in found if isinstance(c, Mapping)]

    @property
    def ready_reason(self) -> Reason | None:
        """The reason of the stored Ready condition, if it is one gitward knows."""
        for raw in self.conditions:
            if raw.get("type") == "Ready":
                try:
                    return Reason(str(raw.get("reason")))
                except ValueError:
                    return None
        return None

    @property
    def ready(self) -> bool:
        """Whether the stored Ready condition is True."""
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in self.conditions)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a reconcile did, for the caller's scheduling and metrics."""

    action: Action
    reason: Reason
    ready: bool
    retry_after: float | None = None
    commit: str = ""
