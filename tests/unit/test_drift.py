"""Drift decided from objects alone: fingerprints of what gitward owns, differences, managers, kept fields."""

from __future__ import annotations

import copy
from typing import Any

from gitward.api.refs import ObjectRef
from gitward.apply import drift

REF = ObjectRef("apps", "v1", "Deployment", "ns", "web")


def deployment(replicas: int = 1, image: str = "app:1", **annotations: str) -> dict[str, Any]:
    """A Deployment as the API server returns it after gitward applied it (managedFields included)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "ns",
            "resourceVersion": "10",
            "annotations": {"gitward.dev/owner": "ns/web", **annotations},
            "managedFields": [
                {
                    "manager": "gitward",
                    "operation": "Apply",
                    "apiVersion": "apps/v1",
                    "time": "2026-11-25T10:00:00Z",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {"f:gitward.dev/owner": {}}},
                        "f:spec": {
                            "f:replicas": {},
                            "f:template": {
                                "f:spec": {
                                    "f:containers": {
                                        'k:{"name":"app"}': {".": {}, "f:image": {}, "f:name": {}}
                                    }
                                }
                            },
                        },
                    },
                },
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "subresource": "status",
                    "time": "2026-11-25T10:00:01Z",
                    "fieldsV1": {"f:status": {"f:replicas": {}}},
                },
            ],
        },
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "app", "image": image}]}},
        },
        "status": {"replicas": replicas},
    }


def taken_over(body: dict[str, Any], manager: str, operation: str = "Update") -> dict[str, Any]:
    """``body`` after ``manager`` changed spec.replicas: the field moves out of gitward's set, as SSA does."""
    changed = copy.deepcopy(body)
    entries = changed["metadata"]["managedFields"]
    del entries[0]["fieldsV1"]["f:spec"]["f:replicas"]
    entries.append(
        {
            "manager": manager,
            "operation": operation,
            "time": "2026-11-25T11:00:00Z",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
    )
    return changed


def test_owned_paths_are_readable_and_carry_the_live_values():
    body = deployment()
    fields = body["metadata"]["managedFields"][0]["fieldsV1"]
    assert dict(drift.owned(fields, body)) == {
        "metadata.annotations.gitward.dev/owner": "ns/web",
        "spec.replicas": 1,
        "spec.template.spec.containers[name=app]": True,
        "spec.template.spec.containers[name=app].image": "app:1",
        "spec.template.spec.containers[name=app].name": "app",
    }


def test_the_fingerprint_ignores_status_and_other_managers_but_not_gitwards_fields():
    base = drift.fingerprint(deployment())
    status_moved = deployment()
    status_moved["status"]["replicas"] = 7
    status_moved["metadata"]["resourceVersion"] = "11"
    status_moved["metadata"]["labels"] = {"added-by": "someone"}  # a field gitward does not own
    assert drift.fingerprint(status_moved) == base
    assert drift.fingerprint(deployment(image="app:2")) != base  # a value gitward set, changed
    assert drift.fingerprint(taken_over(deployment(), "kubectl-edit")) != base  # the same value, taken
    assert drift.fingerprint(deployment(**{"gitward.dev/reconcile": "disabled"})).disabled
    by_hand = taken_over(deployment(replicas=3), "kubectl-edit")
    back_by_hand = taken_over(deployment(replicas=1), "kubectl-edit")  # the same owners, git's value
    assert drift.fingerprint(back_by_hand) != drift.fingerprint(by_hand)


def test_differences_match_named_list_items_by_name():
    want = deployment()
    have = deployment(replicas=3, image="app:2")
    assert list(drift.differences(want, have)) == [
        "spec.replicas",
        "spec.template.spec.containers[name=app].image",
        "status.replicas",
    ]
    assert list(drift.differences({"a": [1, 2]}, {"a": [1, 2, 3]})) == ["a"]
    assert list(drift.differences({"a": [1, 2]}, {"a": [1, 5]})) == ["a[1]"]


def test_a_changed_field_names_the_manager_that_now_owns_it():
    would = deployment()
    live = taken_over(deployment(replicas=3), "kubectl")
    found = drift.drifted(REF, deployment(), would, live)
    assert found == drift.Drifted(REF, "modified", ("spec.replicas",), ("kubectl (Update)",))
    assert found.to_record()["fields"] == ["spec.replicas"]
    assert "spec.replicas by kubectl (Update)" in found.describe()


def test_without_an_owner_of_the_path_the_last_writer_is_named():
    would = deployment()
    live = deployment(image="app:9")
    live["metadata"]["managedFields"].append(
        {"manager": "sneaky", "operation": "Update", "time": "2026-11-25T12:00:00Z", "fieldsV1": {}}
    )
    found = drift.drifted(REF, deployment(), would, live)
    assert found is not None
    assert found.managers == ("sneaky (Update)",)


def test_deleted_disabled_ignored_and_unchanged():
    manifest = deployment()
    assert drift.drifted(REF, manifest, None, None) == drift.Drifted(REF, "deleted")
    assert drift.drifted(REF, manifest, deployment(), deployment()) is None
    disabled_live = deployment(replicas=5, **{"gitward.dev/reconcile": "disabled"})
    assert drift.drifted(REF, manifest, deployment(), disabled_live) is None
    ignoring = deployment(**{"gitward.dev/ignore-fields": "spec.replicas"})
    scaled = deployment(replicas=5, **{"gitward.dev/ignore-fields": "spec.replicas"})
    assert drift.drifted(REF, ignoring, ignoring, scaled) is None
    both = deployment(replicas=5, image="app:2", **{"gitward.dev/ignore-fields": "spec.replicas"})
    found = drift.drifted(REF, ignoring, ignoring, both)
    assert found is not None
    assert found.fields == ("spec.template.spec.containers[name=app].image",)


def test_ignored_fields_keep_their_live_values_in_what_is_applied():
    annotation = {"gitward.dev/ignore-fields": "spec.replicas, spec.template.spec.containers[name=app].image"}
    body = deployment(**annotation)
    live = deployment(replicas=4, image="app:live")
    kept = drift.keep_live(body, live)
    assert kept["spec"]["replicas"] == 4
    assert kept["spec"]["template"]["spec"]["containers"][0]["image"] == "app:live"
    assert body["spec"]["replicas"] == 1  # the manifest itself is untouched
    assert drift.keep_live(body, None) == body  # on creation git's value is written
    gone = copy.deepcopy(live)
    del gone["spec"]["replicas"]
    assert "replicas" not in drift.keep_live(body, gone)["spec"]
