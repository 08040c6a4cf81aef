"""Where the tools built with the local control plane live."""

from __future__ import annotations

import functools
import runpy
import shutil

from support.paths import CLUSTER


@functools.cache
def kubectl_binary() -> str:
    """The kubectl built by hack/cluster (it carries kustomize), else the one on PATH."""
    module = runpy.run_path(str(CLUSTER))
    built = module["bin_dir"]() / "kubectl"
    if built.exists():
        return str(built)
    return shutil.which("kubectl") or "kubectl"
