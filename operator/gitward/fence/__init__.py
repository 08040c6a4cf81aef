"""The tenant's fence: Pod Security labels, default-deny networking, quota, limits, a ServiceAccount.

``baseline`` builds the objects (pure); ``ensure`` applies them as the
operator, idempotently, with its own field manager.
"""
