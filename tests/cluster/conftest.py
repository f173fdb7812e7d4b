"""Fixtures of the cluster tests: the shared video set (see evalset.py); Ray comes from tests/conftest.py."""

from tests.cluster.evalset import evalset  # noqa: F401  (pytest fixture)
