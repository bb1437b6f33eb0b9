"""Every asset and check in definitions.py carries what a reader of the UI needs.

An asset has a group (its stage), a description, kinds, and an owner check: a check on the asset
or on an asset its step writes alongside it (the check that vouches for that step's output).
A check is blocking, or its description says why it is not a gate.
"""

from __future__ import annotations

import dagster as dg
import pytest

from vlit_assets.checks.asset_checks import FinalSuiteConfig, ScoredSuiteConfig
from vlit_assets.checks.final_suite import FINAL_THRESHOLDS
from vlit_assets.checks.scored_suite import PrincipleThresholds
from vlit_assets.core.vocab import FINAL_SUITE, GENERATED_SUITE, RAW_SUITE, SCORED_SUITE, STAGES
from vlit_assets.definitions import defs

# Assets no check reads, with why (a new one must be added here on purpose, with a reason).
UNCHECKED = {
    "final__export": "runs only after final_suite passed on what it writes out",
}

GRAPH = defs.get_repository_def().asset_graph
ASSETS = sorted(GRAPH.get_all_asset_keys(), key=lambda k: k.to_user_string())
CHECKS = list(defs.get_repository_def().asset_checks_defs_by_key.values())


def _checked_assets() -> set[str]:
    """Assets a check is declared on, plus every asset written by the same step as one."""
    owned = {spec.asset_key for check in CHECKS for spec in check.check_specs}
    covered = set(owned)
    for key in owned:
        covered |= set(GRAPH.get(key).execution_set_asset_keys)
    return {k.to_user_string() for k in covered}


@pytest.mark.parametrize("key", ASSETS, ids=lambda k: k.to_user_string())
def test_every_asset_has_a_stage_group_description_and_kinds(key: dg.AssetKey) -> None:
    node = GRAPH.get(key)
    name = key.to_user_string()
    assert node.group_name in STAGES and name.startswith(f"{node.group_name}__"), name
    assert node.description and len(node.description.strip()) >= 20, name
    assert node.kinds, name


def test_every_asset_has_an_owner_check_or_a_reason() -> None:
    names = {k.to_user_string() for k in ASSETS}
    checked = _checked_assets()
    assert sorted(names - checked) == sorted(UNCHECKED)
    assert set(UNCHECKED) <= names  # no stale exemption


def test_one_check_per_suite_with_the_suite_name() -> None:
    names = sorted(spec.name for check in CHECKS for spec in check.check_specs)
    assert names == sorted([RAW_SUITE, GENERATED_SUITE, SCORED_SUITE, FINAL_SUITE])


def test_every_check_is_blocking_or_says_why_not() -> None:
    for check in CHECKS:
        for spec in check.check_specs:
            assert spec.description, spec.name
            if not spec.blocking:
                assert "not a gate" in spec.description, spec.name


def test_a_check_that_reports_by_default_says_so_and_why() -> None:
    """scored_suite blocks only with `blocking: true`; by default a failure is a WARN."""
    (spec,) = [s for c in CHECKS for s in c.check_specs if s.name == SCORED_SUITE]
    assert spec.blocking
    assert "not a gate by default" in spec.description.lower()
    assert "final_suite" in spec.description  # what guards what ships instead
    assert ScoredSuiteConfig().blocking is False


def test_suite_configs_default_to_the_suites_own_bands() -> None:
    assert ScoredSuiteConfig().thresholds() == PrincipleThresholds()
    assert FinalSuiteConfig().thresholds() == FINAL_THRESHOLDS
    assert "blocking" not in FinalSuiteConfig.model_fields  # final_suite is always the gate
