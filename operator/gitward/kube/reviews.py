"""Who may read ``/metrics``: the caller's bearer token checked by the API server, as kube-rbac-proxy does.

A TokenReview says who the token belongs to; a SubjectAccessReview says
whether that identity may ``get`` the non-resource URL ``/metrics``. Both
answers are cached for a minute per token digest (never the token
itself), so a scrape every few seconds costs the API server two requests a
minute, and a flood of bad tokens costs at most two per distinct token.
Each review has a timeout; an error answer or none at all raises
:class:`~gitward.kube.objects.APIError` (the scrape is answered 503) and
is not cached. The token itself is never in an error message.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gitward.kube.http import Connection
from gitward.kube.objects import fetch

_CACHE_SECONDS = 60.0
_CACHE_SIZE = 1024
_TIMEOUT = (10, 30)  # connect, read: a scrape waits on these two reviews


class MetricsAccess:
    """Decides, through the API server, whether a bearer token may read ``/metrics``."""

    def __init__(self, api: Connection, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.clock = clock
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    def allowed(self, token: str) -> bool:
        """Whether the token is valid and its user may ``get /metrics``."""
        if not token:
            return False
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            cached = self._answers.get(key)
            if cached is not None and cached[0] > self.clock():
                return cached[1]
        answer = self._review(token)
        with self._lock:
            self._answers[key] = (self.clock() + _CACHE_SECONDS, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > _CACHE_SIZE:
                self._answers.popitem(last=False)
        return answer

    def _review(self, token: str) -> bool:
        review = self._create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        status = review.get("status") or {}
        user = status.get("user")
        if not status.get("authenticated") or not isinstance(user, dict):
            return False
        spec: dict[str, Any] = {
            "user": user.get("username"),
            "groups": user.get("groups"),
            "uid": user.get("uid"),
            "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
        }
        access = self._create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {key: value for key, value in spec.items() if value is not None},
            },
        )
        return bool((access.get("status") or {}).get("allowed"))

    def _create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = fetch(
            self.api,
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            timeout=_TIMEOUT,
        )
        return answer.json_object()
