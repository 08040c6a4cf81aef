"""gitward.kube.objects against the real API server: dry-runs really write nothing."""

from __future__ import annotations

import pytest

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.errors import Stalled
from gitward.kube.objects import APIError, Objects

pytestmark = pytest.mark.cluster


def configmap(namespace: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "probe", "namespace": namespace},
        "data": {"a": "1"},
    }


def test_a_dry_run_apply_creates_nothing(kube_api, namespace):
    """Server-side apply with dryRun returns the object but stores nothing."""
    objects = Objects(kube_api)
    returned = objects.apply(configmap(namespace), field_manager="gitward", dry_run=True)
    assert returned["data"] == {"a": "1"}
    assert objects.get(ObjectRef.of(configmap(namespace))) is None


def test_a_dry_run_delete_deletes_nothing(kube_api, namespace):
    """A dry-run DELETE keeps the object (dryRun must travel in DeleteOptions, not the query string)."""
    objects = Objects(kube_api)
    objects.apply(configmap(namespace), field_manager="gitward")
    ref = ObjectRef.of(configmap(namespace))
    assert objects.delete(ref, dry_run=True) is True
    assert objects.get(ref) is not None
    assert objects.delete(ref) is True
    assert objects.get(ref) is None
    assert objects.delete(ref) is False


def test_reapplying_the_same_object_leaves_it_unchanged(kube_api, namespace):
    """A second identical apply does not bump the resourceVersion (how 'unchanged' is detected)."""
    objects = Objects(kube_api)
    first = objects.apply(configmap(namespace), field_manager="gitward")
    second = objects.apply(configmap(namespace), field_manager="gitward")
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]


def test_unknown_kinds_and_errors_are_ours(kube_api, namespace):
    """An unserved kind is DryRunFailed; an invalid object is an APIError carrying the server's message."""
    objects = Objects(kube_api)
    with pytest.raises(Stalled) as unknown:
        objects.resource("example.com/v1", "Widget")
    assert unknown.value.reason is Reason.DRY_RUN_FAILED
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": namespace},
           "spec": {"ports": [{"port": 70000}]}}  # fmt: skip
    with pytest.raises(APIError) as invalid:
        objects.apply(bad, field_manager="gitward", dry_run=True)
    assert invalid.value.status == 422
    assert "70000" in invalid.value.message


def test_create_and_merge_patch(kube_api, namespace):
    """create returns None when the name is taken; merge_patch changes only what it names."""
    objects = Objects(kube_api)
    assert objects.create(configmap(namespace)) is not None
    assert objects.create(configmap(namespace)) is None
    patched = objects.merge_patch(ObjectRef.of(configmap(namespace)), {"data": {"b": "2"}})
    assert patched["data"] == {"a": "1", "b": "2"}
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "probe.", "namespace": namespace},
             "involvedObject": {"kind": "ConfigMap", "name": "probe", "namespace": namespace}, "reason": "Probe",
             "message": "m", "type": "Normal"}  # fmt: skip
    assert objects.create(event)["metadata"]["name"].startswith("probe.")
