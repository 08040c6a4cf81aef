"""What the operator imports at start: the image gate's cryptography only once a tenant gates images."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    probe = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_the_operator_starts_without_the_image_verifier():
    """About 11 MiB of resident memory that an operator gating no image never needs."""
    modules = imported_after("import gitward.handlers, gitward.cli")
    assert "gitward.reconcile.steps" in modules
    assert "cryptography" not in modules
    assert "gitward.images.verify" not in modules


def test_the_verifier_comes_with_its_first_use():
    modules = imported_after("from gitward.images.shared import SharedImages\nSharedImages().verdicts")
    assert "cryptography" in modules
