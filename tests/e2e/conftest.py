"""The e2e tier runs the operator as a process; its fixtures are shared with the security tier."""

from support.fixtures import git_server, operator, operator_args, operator_namespace, world  # noqa: F401 - fixtures
