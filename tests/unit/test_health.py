"""Health from object bodies, one YAML fixture per case (as gitops-engine's health testdata)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gitward.apply.health import Health, assess

FIXTURES = sorted((Path(__file__).parent / "testdata" / "health").glob("*.yaml"))


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_health_fixture(fixture):
    """Each fixture's object has the health its `expect` names."""
    case = yaml.safe_load(fixture.read_text())
    status = assess(case["object"])
    assert status.health is Health[case["expect"].upper()], status.message
    assert status.message


def test_a_missing_object_is_the_worst():
    """No object at all is Missing, worse than Degraded."""
    assert assess(None).health is Health.MISSING
    assert Health.MISSING.is_worse(Health.DEGRADED)
    assert not Health.HEALTHY.is_worse(Health.PROGRESSING)
