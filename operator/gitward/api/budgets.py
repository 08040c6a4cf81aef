"""The budget of one tenant's commits: what a push may make gitward fetch, read, parse and build.

A tenant's repository is untrusted input, so every dimension of it has a
bound that is checked before the bytes are read (from git's own size
metadata, or by the OS limits of the child that reads them). An admin sets
a tenant's budget in ``GitOpsTenant.spec.limits``; the operator's own
ceilings (``gitward run --budget-ceiling NAME=VALUE``) cap what any tenant
may be given, so one tenant's generosity cannot become everyone's outage.

Plain data and pure parsing; the source and render layers turn a
:class:`Budgets` into their own limits.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gitward.api.conditions import Reason
from gitward.api.resources import InvalidResourceError, parse_duration

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB


@dataclass(frozen=True, slots=True)
class Budgets:
    """Every budget, in bytes, counts or seconds. The defaults are the secure defaults."""

    # Source: checked on git's metadata, or enforced by the OS limits of git itself (SourceTooLarge)
    fetch_bytes: int = 64 * MIB  # the pack one fetch may write
    object_bytes: int = 4 * MIB  # the largest single object read: commit, tree, blob
    tree_entries: int = 20_000  # entries in the commit's whole tree, recursively
    tree_bytes: int = 128 * MIB  # the sum of the sizes of every file in the commit's tree
    commits: int = 5_000  # new commits verified in one apply
    git_seconds: int = 60  # wall-clock and CPU seconds of one git command
    git_memory: int = 512 * MIB  # address space of one git command
    # Files read for rendering (ManifestTooLarge)
    files: int = 2_000
    file_bytes: int = 4 * MIB
    source_bytes: int = 16 * MIB
    # Rendering (RenderTooLarge; YAML shape is YAMLRejected)
    documents: int = 5_000
    rendered_bytes: int = 16 * MIB
    yaml_depth: int = 64
    kustomizations: int = 256
    kustomize_depth: int = 16
    render_seconds: int = 60
    render_memory: int = 2560 * MIB  # Go reserves address space far beyond what it uses


# How far an operator's ceiling goes by default: a tenant may be given up to this much.
DEFAULT_CEILINGS: Final = Budgets(
    fetch_bytes=512 * MIB,
    object_bytes=64 * MIB,
    tree_entries=200_000,
    tree_bytes=1 * GIB,
    commits=50_000,
    git_seconds=600,
    git_memory=1 * GIB,
    files=20_000,
    file_bytes=32 * MIB,
    source_bytes=128 * MIB,
    documents=50_000,
    rendered_bytes=128 * MIB,
    yaml_depth=128,
    kustomizations=2_048,
    kustomize_depth=32,
    render_seconds=600,
    render_memory=8 * GIB,
)

# What a user sees when a commit exceeds each budget.
REASONS: Final = {
    "fetch_bytes": Reason.SOURCE_TOO_LARGE,
    "object_bytes": Reason.SOURCE_TOO_LARGE,
    "tree_entries": Reason.SOURCE_TOO_LARGE,
    "tree_bytes": Reason.SOURCE_TOO_LARGE,
    "commits": Reason.SOURCE_TOO_LARGE,
    "git_seconds": Reason.SOURCE_TOO_LARGE,  # CPU; a slow server's wall clock is SourceUnavailable
    "git_memory": Reason.SOURCE_TOO_LARGE,
    "files": Reason.MANIFEST_TOO_LARGE,
    "file_bytes": Reason.MANIFEST_TOO_LARGE,
    "source_bytes": Reason.MANIFEST_TOO_LARGE,
    "documents": Reason.RENDER_TOO_LARGE,
    "rendered_bytes": Reason.RENDER_TOO_LARGE,
    "yaml_depth": Reason.YAML_REJECTED,
    "kustomizations": Reason.RENDER_TOO_LARGE,
    "kustomize_depth": Reason.RENDER_TOO_LARGE,
    "render_seconds": Reason.RENDER_TOO_LARGE,
    "render_memory": Reason.RENDER_TOO_LARGE,
}
# What each budget bounds, for people (docs and the CRD's descriptions say the same).
MEANINGS: Final = {
    "fetch_bytes": "bytes one fetch may write (the pack); enforced on git itself by an OS file-size limit",
    "object_bytes": "the largest single object read: a commit, tree or file, from git's size metadata",
    "tree_entries": "entries in the commit's whole tree, counted recursively",
    "tree_bytes": "the sum of the sizes of every file in the commit's tree",
    "commits": "new commits verified in one apply",
    "git_seconds": "CPU seconds of one git command, and its wall clock (a server that runs that out is "
    "SourceUnavailable, retried)",
    "git_memory": "address space of one git command",
    "files": "files read for one render",
    "file_bytes": "bytes of one file read for rendering",
    "source_bytes": "bytes of all files read for one render",
    "documents": "YAML documents (objects) in one render",
    "rendered_bytes": "bytes of kustomize's output",
    "yaml_depth": "how deeply YAML may nest",
    "kustomizations": "kustomization builds, counting every path to a base (reached twice, built twice)",
    "kustomize_depth": "how deeply kustomizations may include each other",
    "render_seconds": "wall-clock and CPU seconds of one kustomize build",
    "render_memory": "address space of one kustomize build",
}

_BYTES: Final = frozenset(
    {
        "fetch_bytes",
        "object_bytes",
        "tree_bytes",
        "git_memory",
        "file_bytes",
        "source_bytes",
        "rendered_bytes",
        "render_memory",
    }
)
_SECONDS: Final = frozenset({"git_seconds", "render_seconds"})
_QUANTITY: Final = re.compile(r"^([0-9]+)(Ki|Mi|Gi|k|M|G)?$")
_SUFFIX: Final = {None: 1, "Ki": KIB, "Mi": MIB, "Gi": GIB, "k": 1000, "M": 1000**2, "G": 1000**3}


def field_name(attribute: str) -> str:
    """The ``spec.limits`` key of a budget attribute (``fetch_bytes`` → ``fetchBytes``)."""
    head, *rest = attribute.split("_")
    return head + "".join(part.capitalize() for part in rest)


FIELDS: Final = {field_name(f.name): f.name for f in dataclasses.fields(Budgets)}


def unit_of(attribute: str) -> str:
    """``bytes``, ``seconds`` or ``count``: how a budget's value is written."""
    if attribute in _BYTES:
        return "bytes"
    if attribute in _SECONDS:
        return "seconds"
    return "count"


def parse_value(attribute: str, raw: object) -> int:
    """A budget value: bytes as an integer or a quantity (``64Mi``), seconds as a duration (``90s``)."""
    if isinstance(raw, bool):
        raise InvalidResourceError(f"limits.{field_name(attribute)} must be a number, not {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and unit_of(attribute) == "bytes" and (match := _QUANTITY.match(raw)):
        value = int(match.group(1)) * _SUFFIX[match.group(2)]
    elif isinstance(raw, str) and unit_of(attribute) == "seconds":
        value = int(parse_duration(raw))
    elif isinstance(raw, str) and raw.isdigit():
        value = int(raw)
    else:
        raise InvalidResourceError(f"limits.{field_name(attribute)}: {raw!r} is not a valid value")
    if value < 1:
        raise InvalidResourceError(f"limits.{field_name(attribute)} must be at least 1")
    return value


def describe(attribute: str, value: int) -> str:
    """A value as a person reads it (``64Mi``, ``60s``, ``5000``)."""
    if unit_of(attribute) == "seconds":
        return f"{value}s"
    if unit_of(attribute) == "bytes":
        for suffix, size in (("Gi", GIB), ("Mi", MIB), ("Ki", KIB)):
            if value % size == 0:
                return f"{value // size}{suffix}"
    return str(value)


def from_spec(limits: Mapping[str, Any], *, ceilings: Budgets = DEFAULT_CEILINGS) -> Budgets:
    """A tenant's budgets: its ``spec.limits`` over the defaults, each capped by the operator's ceiling."""
    unknown = sorted(set(limits) - set(FIELDS))
    if unknown:
        raise InvalidResourceError(f"spec.limits has unknown fields: {', '.join(unknown)}")
    chosen = {
        attribute: parse_value(attribute, limits[key]) for key, attribute in FIELDS.items() if key in limits
    }
    defaults = Budgets()
    values = {
        f.name: min(chosen.get(f.name, getattr(defaults, f.name)), getattr(ceilings, f.name))
        for f in dataclasses.fields(Budgets)
    }
    return Budgets(**values)


def parse_ceilings(items: Iterable[str]) -> Budgets:
    """Operator ceilings from ``NAME=VALUE`` strings (``fetchBytes=1Gi``), over :data:`DEFAULT_CEILINGS`."""
    values = dataclasses.asdict(DEFAULT_CEILINGS)
    for item in items:
        key, separator, raw = item.partition("=")
        if not separator or key not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise InvalidResourceError(
                f"--budget-ceiling {item!r}: expected NAME=VALUE with NAME one of {known}"
            )
        values[FIELDS[key]] = parse_value(FIELDS[key], raw)
    return Budgets(**values)
