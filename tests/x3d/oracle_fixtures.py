"""The fixtures every module that compares against MMAction2 uses: import them into the module
(``from tests.x3d.oracle_fixtures import mmaction, one_torch_per_module  # noqa: F401``)."""

from __future__ import annotations

import pytest

from tests.x3d import mmaction_oracle as oracle


@pytest.fixture(scope="module", autouse=True)
def one_torch_per_module():
    """One intra-op thread for the module's forwards (``oracle.one_torch_thread`` says why)."""
    yield from oracle.one_torch_thread()


@pytest.fixture(scope="module", autouse=True)
def mmaction():
    """MMAction2 1.2.0, imported with the stand-ins it needs here (``oracle.import_mmaction``)."""
    return oracle.import_mmaction()
