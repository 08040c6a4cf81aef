"""Who may read ``/metrics``: the caller's bearer token checked by the API server, as kube-rbac-proxy does.

A TokenReview says who the token belongs to; a SubjectAccessReview says
whether that identity may ``get`` the non-resource URL ``/metrics``. Both
answers are cached for a minute per token digest (never the token
itself), so a scrape every few seconds costs the API server two requests a
minute, and a flood of bad tokens costs at most two per distinct token.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from kubernetes import client

_CACHE_SECONDS = 60.0
_CACHE_SIZE = 1024


class MetricsAccess:
    """Decides, through the API server, whether a bearer token may read ``/metrics``."""

    def __init__(self, api: client.ApiClient, *, clock: Callable[[], float] = time.monotonic) -> None:
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
        review = client.AuthenticationV1Api(self.api).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        )
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return False
        access = client.AuthorizationV1Api(self.api).create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=status.user.username,
                    groups=status.user.groups,
                    uid=status.user.uid,
                    non_resource_attributes=client.V1NonResourceAttributes(path="/metrics", verb="get"),
                )
            )
        )
        return bool(access.status and access.status.allowed)
