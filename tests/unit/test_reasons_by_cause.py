"""Reasons are chosen by the cause, provoked for real: an API server that does not answer, a tool that hangs."""

from __future__ import annotations

import os

import pytest

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.errors import Waiting
from gitward.kube.config import Configuration
from gitward.kube.http import Connection
from gitward.kube.objects import APIError, Objects, classify
from gitward.kube.reads import KubeReader
from gitward.trust.tools import run_tool
from support.gitservers import closed_port


def unreachable_api(port: int) -> Connection:
    return Connection(Configuration(host=f"http://127.0.0.1:{port}"))


@pytest.mark.parametrize(
    "read",
    [
        lambda reader: reader.tenant("t"),
        lambda reader: reader.key_config_map("keys"),
        lambda reader: reader.secret_data("ns", "git"),
    ],
)
def test_an_api_server_that_does_not_answer_is_api_unavailable_not_the_objects_fault(read):
    """A refused connection is APIUnavailable (retried), not TenantNotFound, UntrustedSigner or FetchFailed."""
    with closed_port() as port:
        reader = KubeReader(unreachable_api(port), operator_namespace="gitward-system")
        with pytest.raises(Waiting) as error:
            read(reader)
    assert error.value.reason is Reason.API_UNAVAILABLE


def test_an_apply_that_gets_no_answer_is_api_unavailable_not_apply_forbidden():
    """A transport failure during an apply is APIUnavailable; only a 403 is ApplyForbidden."""
    ref = ObjectRef("", "v1", "ConfigMap", "ns", "cm")
    with closed_port() as port:
        objects = Objects(unreachable_api(port))
        with pytest.raises(Waiting) as waiting:
            objects.get(ref)
        assert waiting.value.reason is Reason.API_UNAVAILABLE
        with pytest.raises(APIError) as raised:
            objects._call("GET", "/api/v1/namespaces/ns/configmaps/cm")  # noqa: SLF001 - the raw transport error
    assert raised.value.status == 0
    assert classify(raised.value, ref=ref, dry_run=True).reason is Reason.API_UNAVAILABLE
    assert classify(APIError(403, "forbidden"), ref=ref, dry_run=True).reason is Reason.APPLY_FORBIDDEN
    assert classify(APIError(503, "unavailable"), ref=ref, dry_run=True).reason is Reason.API_UNAVAILABLE
    assert classify(APIError(422, "invalid"), ref=ref, dry_run=True).reason is Reason.DRY_RUN_FAILED


def test_a_verification_tool_that_hangs_is_retried_not_an_invalid_signature():
    """gpg or ssh-keygen killed at its time limit says nothing about the signature: ReconcileError, retried."""
    with pytest.raises(Waiting) as error:
        run_tool(["sleep", "30"], env={"PATH": os.environ["PATH"]}, timeout=0.5)
    assert error.value.reason is Reason.RECONCILE_ERROR


def test_a_field_another_manager_owns_is_a_field_conflict_naming_it_not_an_ownership_conflict():
    """Told apart by the Status object's causes (as the API server sends them), not by message text."""
    ref = ObjectRef("", "v1", "ConfigMap", "ns", "settings")
    answer = (
        b'{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Apply failed with 1 conflict: '
        b'conflict with \\"one\\": .data.a","reason":"Conflict","details":{"causes":[{"reason":'
        b'"FieldManagerConflict","message":"conflict with \\"one\\"","field":".data.a"}]},"code":409}'
    )
    error = APIError.from_response(409, answer, "Conflict")
    assert error.conflicts == ((".data.a", 'conflict with "one"'),)
    found = classify(error, ref=ref, dry_run=True)
    assert found.reason is Reason.FIELD_CONFLICT
    assert '.data.a (conflict with "one")' in found.message
    assert "spec.force" in found.message
    exists = APIError.from_response(409, b'{"message":"already exists","reason":"AlreadyExists"}', None)
    assert classify(exists, ref=ref, dry_run=True).reason is Reason.OWNERSHIP_CONFLICT
