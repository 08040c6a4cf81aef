"""Prometheus metrics of the operator, served at ``/metrics`` by the webhook server."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "gitward_reconcile_duration_seconds",
    "Time one GitOpsApp reconcile took.",
    ["namespace", "app"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RECONCILES = Counter("gitward_reconciles_total", "Reconciles by what they did and why.", ["action", "reason"])
LAST_APPLIED = Gauge(
    "gitward_last_applied_timestamp_seconds", "When the app last applied a revision.", ["namespace", "app"]
)
VERIFICATION_FAILURES = Counter(
    "gitward_verification_failures_total", "Commits refused by source checks, by reason.", ["reason"]
)
WEBHOOKS = Counter("gitward_webhook_requests_total", "Push webhook requests by result.", ["result"])
KUBE_REQUESTS = Counter(
    "gitward_kube_requests_total",
    "Requests gitward's own Kubernetes clients made (kopf's watches and patches not included), by verb.",
    ["verb"],
)
DRIFT = Counter(
    "gitward_drift_total",
    "Objects found drifted from the applied revision, by app and by what was done (corrected or reported).",
    ["namespace", "app", "action"],
)
DRIFT_CHECKS = Counter(
    "gitward_drift_checks_total",
    "Drift checks by how they were answered: from the watch summaries (fast) or by a dry-run of the "
    "applied revision (full).",
    ["kind"],
)
