"""Resource models: parsed with the CRD's defaults, refused when malformed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gitward.api import resources
from gitward.api.resources import InvalidResourceError, parse_app_spec, parse_duration, parse_tenant_spec

CRDS = Path(__file__).resolve().parents[2] / "crds"


def crd_schema(plural: str) -> dict[str, Any]:
    body = yaml.safe_load((CRDS / f"gitward.dev_{plural}.yaml").read_text())
    schema: dict[str, Any] = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m", 60.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5h", 5400.0)],
)
def test_durations_parse_like_go(text, seconds):
    """Go duration strings become seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-1m", "1d", "m", "1 m", "1m-"])
def test_malformed_durations_are_refused(text):
    """Anything the CRD pattern would refuse is refused here too."""
    with pytest.raises(InvalidResourceError):
        parse_duration(text)


@given(st.integers(0, 48), st.integers(0, 59), st.integers(0, 59))
def test_duration_components_add_up(hours, minutes, seconds):
    """h, m and s parts combine additively, in any magnitude."""
    assert parse_duration(f"{hours}h{minutes}m{seconds}s") == hours * 3600 + minutes * 60 + seconds


def test_app_defaults_match_the_crd_defaults():
    """A minimal app parses to the same defaults the API server would fill in."""
    schema = crd_schema("gitopsapps")["properties"]["spec"]["properties"]
    app = parse_app_spec({"tenant": "team-a", "source": {"url": "https://git.example.com/a.git"}})
    source = schema["source"]["properties"]
    assert app.source.branch == source["branch"]["default"]
    assert app.source.path == source["path"]["default"]
    assert app.source.interval_seconds == parse_duration(source["interval"]["default"])
    assert app.prune is schema["prune"]["default"]
    assert app.suspend is schema["suspend"]["default"]
    assert app.history_limit == schema["historyLimit"]["default"]
    assert app.health_timeout_seconds == parse_duration(schema["healthTimeout"]["default"])
    assert app.auto_rollback is schema["autoRollback"]["default"]
    assert app.rollback_to == schema["rollbackTo"]["default"]
    assert app.target_namespace is None
    guard = schema["pruneGuard"]["properties"]
    assert app.prune_guard.allow_empty is guard["allowEmpty"]["default"]
    assert app.prune_guard.max_share_percent == guard["maxSharePercent"]["default"]


def test_tenant_defaults_match_the_crd_defaults():
    """A minimal tenant parses to the CRD's defaults for trust, policy and isolation."""
    schema = crd_schema("gitopstenants")["properties"]["spec"]["properties"]
    tenant = parse_tenant_spec(
        {
            "namespaces": ["team-a"],
            "sources": [{"url": "https://git.example.com/team-a/*"}],
            "trust": {"keysFrom": [{"configMapRef": {"name": "keys"}}]},
        }
    )
    trust = schema["trust"]["properties"]
    assert tenant.verify.value == trust["verify"]["default"]
    assert tenant.require_fast_forward is trust["requireFastForward"]["default"]
    assert tenant.pod_security.value == schema["policy"]["properties"]["podSecurity"]["default"]
    assert tenant.network_policy.value == schema["isolation"]["properties"]["networkPolicy"]["default"]
    assert (
        tenant.allow_plaintext_secrets is schema["policy"]["properties"]["allowPlaintextSecrets"]["default"]
    )
    source_schema = schema["sources"]["items"]["properties"]
    assert list(tenant.sources[0].branches) == source_schema["branches"]["default"]
    assert tenant.keys_from == (resources.KeyRef("keys"),)


def test_enums_match_the_crd_enums():
    """Every enum value the CRD accepts has a model member, and no more."""
    tenant = crd_schema("gitopstenants")["properties"]["spec"]["properties"]
    assert {m.value for m in resources.VerifyMode} == set(tenant["trust"]["properties"]["verify"]["enum"])
    assert {m.value for m in resources.PodSecurityLevel} == set(
        tenant["policy"]["properties"]["podSecurity"]["enum"]
    )
    assert {m.value for m in resources.NetworkIsolation} == set(
        tenant["isolation"]["properties"]["networkPolicy"]["enum"]
    )
    revision = crd_schema("gitopsrevisions")["properties"]["spec"]["properties"]
    assert {m.value for m in resources.Trigger} == set(revision["trigger"]["enum"])
    assert {m.value for m in resources.ChangeAction} == set(
        revision["changes"]["items"]["properties"]["action"]["enum"]
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": {"url": "https://x/a.git"}}, "spec.tenant is required"),
        ({"tenant": "t", "source": {}}, "spec.source.url is required"),
        ({"tenant": "t", "source": {"url": "https://x/a.git", "interval": "-5m"}}, "not a duration"),
        ({"tenant": "t", "source": {"url": "https://x/a.git"}, "historyLimit": 0}, "historyLimit"),
        ({"tenant": "t", "source": "https://x/a.git"}, "spec.source must be an object"),
    ],
)
def test_malformed_apps_are_refused(spec, message):
    """A body the CRD would refuse does not become a half-filled model."""
    with pytest.raises(InvalidResourceError, match=message):
        parse_app_spec(spec)


def test_unknown_enum_values_are_refused():
    """An enum value outside the contract is named in the error."""
    with pytest.raises(InvalidResourceError, match="head, all"):
        parse_tenant_spec({"namespaces": ["a"], "sources": [], "trust": {"verify": "some"}})
