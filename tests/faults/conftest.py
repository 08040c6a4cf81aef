"""The fault tier kills and restarts operator processes; it shares the e2e tier's fixtures."""

from support.fixtures import git_server, operator, operator_args, operator_namespace, world  # noqa: F401 - fixtures
