"""Which apps one operator process reconciles: its shard. Pure.

Two ways to split the apps between operator Deployments, in the spirit of
Flux's ``sharding.fluxcd.io/key``:

- by label: a process run with ``--shard KEY`` owns the apps labelled
  ``gitward.dev/shard=KEY``; a process run without a shard flag (the main
  instance) owns only the apps *without* that label (an empty value counts as
  no label). A main instance plus one instance per key therefore partition
  the apps, as Flux's ``!sharding.fluxcd.io/key`` / ``in (KEY)`` selectors do.
- by stable hash: ``--shard-hash I/N`` owns the unlabelled apps whose
  ``sha256("namespace/name")``, read as a big-endian integer, is ``I`` modulo
  ``N``. Instances ``0/N`` .. ``N-1/N`` replace the main instance, and label
  shards still take the labelled apps.

The hash is of the app's namespace and name only, so an app keeps its shard
for its whole life (a label is the way to move it). Each shard is held by one
active replica at a time through a Lease named :attr:`Shard.lease_name`
(``gitward.kube.leases``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

SHARD_LABEL = "gitward.dev/shard"
LEASE_PREFIX = "gitward-shard-"
DEFAULT_LEASE = f"{LEASE_PREFIX}default"
DEFAULT_FINALIZER = "gitward.dev/finalizer"
FINALIZER_PREFIX = "shard.gitward.dev/"
MAX_KEY = 63
MAX_SHARDS = 1024

# A shard key is a label value (it is matched against gitward.dev/shard) that is also a DNS-1123 label, so it
# can name the shard's Lease, Deployment and Service: lowercase letters, digits and '-', at most 63.
_KEY = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HASH_KEY = re.compile(r"hash-\d+-of-\d+")  # the names hash shards' Leases use
_RESERVED = frozenset({"default"})  # the main instance's Lease


def validate_key(key: str) -> str:
    """``key`` if it can name a label shard; else :class:`ValueError` saying why."""
    if not key or len(key) > MAX_KEY or not _KEY.fullmatch(key):
        raise ValueError(
            f"shard key {key!r} must be 1-63 lowercase letters, digits or '-', starting and ending with a "
            "letter or digit (a label value that can also name the shard's Lease)"
        )
    if key in _RESERVED or _HASH_KEY.fullmatch(key):
        raise ValueError(f"shard key {key!r} is reserved: it would share a Lease with another kind of shard")
    return key


def parse_hash(spec: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with ``0 <= I < N <= 1024``; else :class:`ValueError` saying why."""
    index, slash, count = spec.partition("/")
    if not slash or not index.isdigit() or not count.isdigit():
        raise ValueError(f"hash shard {spec!r} must be I/N, two whole numbers (for example 0/3)")
    i, n = int(index), int(count)
    if not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"hash shard {spec!r}: N must be between 1 and {MAX_SHARDS}")
    if not 0 <= i < n:
        raise ValueError(f"hash shard {spec!r}: I must be between 0 and N-1")
    return i, n


def bucket(namespace: str, name: str, count: int) -> int:
    """The hash bucket of the app ``namespace/name`` among ``count``: stable across processes and versions."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """The apps this process owns; the default (the main instance) owns every app without a shard label.

    ``key`` set: the apps labelled ``gitward.dev/shard=key``. Else ``count > 1``:
    the unlabelled apps in hash bucket ``index`` of ``count``.
    """

    key: str | None = None
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.key is not None:
            validate_key(self.key)
            if (self.index, self.count) != (0, 1):
                raise ValueError("a shard is either a label key or a hash bucket, not both")
        else:
            parse_hash(f"{self.index}/{self.count}")

    @classmethod
    def of(cls, *, key: str | None = None, hash_spec: str | None = None) -> Shard:
        """The shard named by the ``--shard`` and ``--shard-hash`` flags (at most one of them)."""
        if key is not None and hash_spec is not None:
            raise ValueError("--shard and --shard-hash are alternatives: give one or the other")
        if hash_spec is not None:
            index, count = parse_hash(hash_spec)
            return cls(index=index, count=count)
        return cls(key=key)

    def owns(self, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        """Whether the app ``namespace/name`` with ``labels`` belongs to this shard."""
        label = labels.get(SHARD_LABEL) or None
        if self.key is not None:
            return label == self.key
        if label is not None:
            return False
        return self.count == 1 or bucket(namespace, name, self.count) == self.index

    @property
    def lease_name(self) -> str:
        """The Lease that one replica of this shard holds: one name per shard, never shared by two."""
        if self.key is not None:
            return f"{LEASE_PREFIX}{self.key}"
        if self.count > 1:
            return f"{LEASE_PREFIX}hash-{self.index}-of-{self.count}"
        return DEFAULT_LEASE

    @property
    def finalizer(self) -> str:
        """The finalizer this shard's processes put on the apps they own: one name per shard.

        kopf removes its finalizer from every object none of its handlers match, so
        processes of two shards sharing one name would take it off each other's apps
        in an endless loop of patches. With a name per shard, a process only ever
        adds or removes its own. The main instance keeps ``gitward.dev/finalizer``.
        """
        if self.key is None and self.count == 1:
            return DEFAULT_FINALIZER
        return f"{FINALIZER_PREFIX}{self.lease_name.removeprefix(LEASE_PREFIX)}"

    def __str__(self) -> str:
        if self.key is not None:
            return f"{SHARD_LABEL}={self.key}"
        if self.count > 1:
            return f"hash {self.index}/{self.count} of the apps without {SHARD_LABEL}"
        return f"the apps without {SHARD_LABEL}"
