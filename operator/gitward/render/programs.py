"""What the render step's Go programs (kustomize, sops) start with: an absolute path and a bare environment.

Both read untrusted files, so both run with nothing to find: ``PATH``, ``HOME`` and ``TMPDIR`` are
empty private directories, every proxy variable points at the discard port (a proxy-aware client
fails at once instead of reaching out), the locale is fixed, and Go's collector holds the heap to a
fifth of the address-space limit (the rest is what Go reserves but never touches).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from gitward.api.conditions import Reason
from gitward.errors import Waiting
from gitward.render.limits import Limits

DISCARD: Final = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
PROXY_VARIABLES: Final = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


def executable(command: Sequence[str], *, tool: str, flag: str) -> str:
    """The program of ``command`` as an absolute path on the operator's own PATH.

    A missing program is the operator's problem, not the commit's: ``Waiting(ReconcileError)``.
    """
    found = shutil.which(command[0]) if command else None
    if found is None:
        raise Waiting(
            Reason.RECONCILE_ERROR,
            f"{tool} is not available: {command[0] if command else '(no command)'!r} is not an executable "
            f"on the operator's PATH; fix the operator's {tool} command ({flag})",
        )
    return str(Path(found).absolute())  # not resolve(): a multi-call binary needs its own name


def bare_environment(base: Path, limits: Limits, *, directories: Sequence[str] = ()) -> dict[str, str]:
    """The environment both programs start from; ``directories`` are more empty ones (``base / name``)."""
    empty = {name: base / name for name in ("bin", "home", "tmp", *directories)}
    for directory in empty.values():
        directory.mkdir(mode=0o700)
    return {
        "PATH": str(empty["bin"]),
        "HOME": str(empty["home"]),
        "TMPDIR": str(empty["tmp"]),
        "LANG": "C",
        "LC_ALL": "C",
        **dict.fromkeys(PROXY_VARIABLES, DISCARD),
        "NO_PROXY": "",
        "no_proxy": "",
        "GOMEMLIMIT": str(max(1, limits.kustomize_memory_bytes // 5)),
    }
