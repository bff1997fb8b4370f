"""Fixtures for the deploy tests: the real deploy runs against this machine."""

from __future__ import annotations

import pytest

from tests.provision.deployrun import load_helper, run_deploy


@pytest.fixture(scope="session")
def redeployed(deployed):
    """A second deploy right after the first, with `ps` sampled while it ran."""
    run = run_deploy(sample_ps=True)
    assert run.returncode == 0, run.output[-4000:]
    return run


@pytest.fixture(scope="session")
def helper():
    return load_helper()


@pytest.fixture(scope="session")
def passwords(deployed, settings, helper) -> dict[str, str]:
    """Every role password the deploy keeps (read as root from the passfile)."""
    found = helper.read_passfile(str(settings.db_passfile))
    assert found, f"no passwords in {settings.db_passfile}"
    return found
