"""`make demo` runs to the end: deploy, change, an unsigned commit refused, a revert; and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys

from support.paths import REPO


def test_the_demo_walks_through_and_leaves_nothing_running():
    """hack/demo exits 0, prints each step's evidence, and stops every process it started."""
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for evidence in ("Deployed", "deployment.apps/web", "UnsignedCommit", "Revert", "demo finished"):
        assert evidence in out
    greetings = [line for line in out.splitlines() if line in {"hello", "hello again", "pwned"}]
    assert greetings == ["hello again", "hello"]  # unchanged by the unsigned commit, then reverted
    leftovers = subprocess.run(["pgrep", "-f", "gitward-demo-"], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == ""
