"""The fault suite's fixed-seed part: a few trials of every fault (the full table is
scripts/fault_suite.py). A trial fails with the check that did not hold."""

from __future__ import annotations

import pytest
from faults import Env, load_all, run_trial

FAULTS = load_all()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("faults"))


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_is_survived(fault, env):
    outcomes = [run_trial(fault, seed=0, index=i, env=env) for i in range(fault.ci_trials)]
    failures = [o.detail for o in outcomes if not o.survived]
    assert not failures, f"{fault.name}: {failures}"
    assert sum(o.lost for o in outcomes) == 0
