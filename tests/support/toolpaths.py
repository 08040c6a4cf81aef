"""Where the tools built with the local control plane live."""

from __future__ import annotations

import functools
import runpy
import shutil
from pathlib import Path
from typing import Any

from support.paths import CLUSTER


@functools.cache
def _cluster_module() -> dict[str, Any]:
    return runpy.run_path(str(CLUSTER))


@functools.cache
def kubectl_binary() -> str:
    """The kubectl built by hack/cluster (it carries kustomize), else the one on PATH."""
    built = _cluster_module()["bin_dir"]() / "kubectl"
    if built.exists():
        return str(built)
    return shutil.which("kubectl") or "kubectl"


def built_tool(name: str) -> str:
    """A supply-chain tool built by ``hack/cluster build`` at the version pinned in hack/tools.

    Never a look-alike from PATH: the tests pin what they test against. A missing binary fails
    the test that needs it (``make test`` builds them first), it does not skip it.
    """
    path: Path = _cluster_module()["tool_bin"](name)
    if not path.exists():
        raise FileNotFoundError(f"{name} is not built at {path}: run hack/cluster build")
    return str(path)


def tool_version(name: str) -> str:
    """The version of a supply-chain tool pinned in hack/tools (``v3.13.3``)."""
    version: str = _cluster_module()["tool_version"](name)
    return version


def sops_binary() -> str:
    """The real sops, pinned in hack/tools/sops (the operator image carries the same version)."""
    return built_tool("sops")


def age_keygen_binary() -> str:
    """The real age-keygen, pinned in hack/tools/age."""
    return built_tool("age-keygen")


def age_binary() -> str:
    """The real age, pinned in hack/tools/age."""
    return built_tool("age")


def registry_binary() -> str:
    """The real CNCF Distribution registry, pinned in hack/tools/registry."""
    return built_tool("registry")


def cosign_binary() -> str:
    """The real cosign v2, pinned in hack/tools/cosign."""
    return built_tool("cosign")
