"""The push webhook: signatures per provider, constant-time checks, size limit, never trusting content."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gitward.webhook import MAX_BODY, authentic, make_app

SECRET = b"s3cret"
BODY = b'{"ref": "refs/heads/main"}'
DIGEST = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Hub-Signature-256": f"sha256={DIGEST}"}, True),
        ({"X-Hub-Signature-256": f"sha256={'0' * 64}"}, False),
        ({"X-Hub-Signature-256": DIGEST}, False),
        ({"X-Gitea-Signature": DIGEST}, True),
        ({"X-Forgejo-Signature": DIGEST}, True),
        ({"X-Gitea-Signature": "nope"}, False),
        ({"X-Gitlab-Token": "s3cret"}, True),
        ({"X-Gitlab-Token": "s3cre"}, False),
        ({"X-Signature-256": f"sha256={DIGEST}"}, True),
        ({}, False),
    ],
)
def test_signatures(headers, expected):
    """GitHub, Gitea/Forgejo, GitLab and generic signatures; anything else is not authentic."""
    assert authentic(headers, BODY, SECRET) is expected


def test_the_endpoint():
    """401 without or with a wrong signature, 413 over the size limit, 404 for an unknown app, 202 to wake."""
    woken: list[tuple[str, str]] = []

    async def secret_for(namespace: str, name: str) -> bytes | None:
        return SECRET if name in {"web", "gone"} else None

    def wake(namespace: str, name: str) -> bool:
        if name == "gone":
            return False
        woken.append((namespace, name))
        return True

    async def scenario() -> list[int]:
        client = TestClient(TestServer(make_app(secret_for=secret_for, wake=wake)))
        await client.start_server()
        try:
            statuses = []
            signed = {"X-Hub-Signature-256": f"sha256={DIGEST}"}
            for path, body, headers in [
                ("/hooks/team-a/web", BODY, {}),
                ("/hooks/team-a/web", BODY, {"X-Hub-Signature-256": "sha256=" + "1" * 64}),
                ("/hooks/team-a/other", BODY, signed),
                ("/hooks/team-a/web", b"x" * (MAX_BODY + 1), signed),
                ("/hooks/team-a/gone", BODY, signed),
                ("/hooks/team-a/web", BODY, signed),
            ]:
                response = await client.post(path, data=body, headers=headers)
                statuses.append(response.status)
            metrics = await client.get("/metrics")
            assert "gitward_webhook_requests_total" in await metrics.text()
            return statuses
        finally:
            await client.close()

    assert asyncio.run(scenario()) == [401, 401, 401, 413, 404, 202]
    assert woken == [("team-a", "web")]
