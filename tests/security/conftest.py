"""The security tier attacks the operator running as a process; fixtures shared with the e2e tier."""

from support.fixtures import git_server, operator, operator_args, operator_namespace, world  # noqa: F401 - fixtures
