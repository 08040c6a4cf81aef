"""The reconcile pipeline, in one home.

``state`` (the typed run and the services it uses), ``status`` (what the
operator knows between attempts), ``resolve`` (tenant policy, keys,
credentials, budgets), ``decide`` (pure: skip, run, hold, roll back; which
condition a reason sets; backoff), ``steps`` (the ordered steps, with
``stop_after`` for ``gitward verify`` and ``gitward diff``), ``rollback``
(the ways back) and ``app`` (one attempt: decide, run, then one record and
one status write, at the end). ``handlers`` and ``cli`` call it; nothing
else sequences steps.
"""
