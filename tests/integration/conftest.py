"""Fixtures shared by the integration tests of the submission engine: the two carrier simulators."""

from __future__ import annotations

import pytest

from tests.support import env
from tests.support.carrier import carrier


@pytest.fixture(scope="module")
def primary():
    with carrier("primary", env.TEST_SMS_API_KEY) as sim:
        yield sim


@pytest.fixture(scope="module")
def secondary():
    with carrier("secondary", env.TEST_SMS_SECONDARY_API_KEY) as sim:
        yield sim


@pytest.fixture
def carriers(primary, secondary):
    """Both simulators, without faults and with nothing received."""
    for sim in (primary, secondary):
        sim.set_faults({})
        sim.call("POST", "/_sim/reset")
    return primary, secondary
