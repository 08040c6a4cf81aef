"""Test Jobs, the pure parts: which objects are tests, which hooks are refused, what a log tail may show."""

from __future__ import annotations

import base64
from typing import Any

from gitward.api.conditions import Reason
from gitward.apply import health, testjobs
from gitward.policy.hooks import hook_problem, is_test
from gitward.render.manifests import Manifest


def manifest(kind: str, name: str, api_version: str = "v1", **extra: Any) -> Manifest:
    return Manifest(
        {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **extra}, "x.yaml", 0
    )


def hooked(kind: str, api_version: str, value: str = "test") -> Manifest:
    body = manifest(kind, "t", api_version).obj
    return Manifest(
        {**body, "metadata": {"name": "t", "annotations": {"gitward.dev/hook": value}}}, "x.yaml", 0
    )


def test_only_jobs_annotated_as_tests_are_split_off():
    job = hooked("Job", "batch/v1")
    plain_job = manifest("Job", "migrate", "batch/v1")
    kept, tests = testjobs.split([plain_job, job, manifest("ConfigMap", "c")])
    assert tests == [job]
    assert [m.name for m in kept] == ["migrate", "c"]
    assert is_test(job.obj)
    assert not is_test(plain_job.obj)


def test_a_hook_on_another_kind_or_an_unknown_hook_is_a_problem():
    assert hook_problem(hooked("Job", "batch/v1")) is None
    assert hook_problem(manifest("Job", "j", "batch/v1")) is None
    assert "not ConfigMap" in (hook_problem(hooked("ConfigMap", "v1")) or "")
    assert "not CronJob" in (hook_problem(hooked("CronJob", "batch/v1")) or "")
    assert "'PreSync' is not a hook" in (hook_problem(hooked("Job", "batch/v1", "PreSync")) or "")


def test_secret_values_cover_data_decoded_and_string_data_encoded():
    secret = manifest(
        "Secret",
        "s",
        data={"token": base64.b64encode(b"hunter2-token").decode()},
        stringData={"password": "correct-horse"},
    )
    values = testjobs.secret_values([secret, manifest("ConfigMap", "c", data={"k": "not-secret"})])
    assert "hunter2-token" in values
    assert base64.b64encode(b"hunter2-token").decode() in values
    assert "correct-horse" in values
    assert base64.b64encode(b"correct-horse").decode() in values
    assert "not-secret" not in values


def test_short_values_are_not_masked_and_longer_ones_are_masked_first():
    secret = manifest("Secret", "s", stringData={"a": "ab", "b": "token-1", "c": "token-12"})
    values = testjobs.secret_values([secret])
    assert "ab" not in values
    assert (
        testjobs.redact("got token-12 and token-1 and ab", values) == "got [redacted] and [redacted] and ab"
    )


def test_failure_names_every_failed_test_and_passes_when_all_succeed():
    passed = testjobs.TestResult("a", succeeded=True)
    failed = testjobs.TestResult("b", succeeded=False, reason="BackoffLimitExceeded", message="1 failed pod")
    late = testjobs.TestResult("c", succeeded=False, reason="NotFinished", message="not finished in time")
    assert testjobs.failure([passed]) is None
    error = testjobs.failure([passed, failed, late])
    assert error is not None
    assert error.reason is Reason.TEST_FAILED
    assert "2 of 3" in error.message
    assert "Job/b: BackoffLimitExceeded: 1 failed pod" in error.message
    assert "Job/c: NotFinished" in error.message


def test_a_record_entry_is_bounded():
    entry = testjobs.TestResult("a", succeeded=False, reason="r" * 999, log_tail="x" * 99999).to_record()
    assert entry["outcome"] == "Failed"
    assert len(entry["reason"]) == 256
    assert len(entry["logTail"]) == testjobs.LOG_BYTES


def test_a_failed_job_settles_a_wait_and_a_running_one_does_not():
    failed = health.assess(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "status": {"conditions": [{"type": "Failed", "status": "True"}]},
        }
    )
    running = health.assess({"apiVersion": "batch/v1", "kind": "Job", "status": {}})
    done = health.HealthStatus(health.Health.HEALTHY)
    assert failed.final
    assert not running.final
    assert health.HealthStatus.settled([done, failed, running])
    assert not health.HealthStatus.settled([done, running])
    assert health.HealthStatus.settled([done, done])


def test_test_of_is_a_valid_label_value_for_any_owner():
    value = testjobs.test_of("a-namespace-with-a-long-name/and-an-app-with-an-even-longer-name-than-that")
    assert len(value) <= 63
    assert value.isalnum()


def test_a_text_cut_inside_a_secret_masks_its_beginning():
    values = {"sk-live-0123456789"}
    assert testjobs.redact("token: sk-live-01", values) == "token: [redacted]"
    assert testjobs.redact("token: sk-l", values) == "token: [redacted]"
    assert testjobs.redact("token: sk-", values) == "token: sk-"  # shorter than any value we mask


def test_the_last_bytes_start_at_a_line():
    text = "".join(f"line {i}\n" for i in range(1000))
    kept = testjobs.last_bytes(text, 64)
    assert len(kept.encode()) <= 64
    assert kept.startswith("line ")
    assert kept.endswith("line 999\n")
    assert testjobs.last_bytes("short", 64) == "short"
