"""Server-side apply as the tenant: dry-run everything, then write in order, prune, and wait for health.

``order``, ``inventory`` and ``health`` are pure; ``run`` drives the
Kubernetes API through :mod:`gitward.kube.objects`.
"""
