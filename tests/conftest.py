"""Test-suite policy.

Lab tests need root, loop devices, network namespaces and the peers' programs. Without them
they skip with the reason. CI (and anyone who wants proof) sets BMM_REQUIRE_LAB=1: then every
skip is turned into a failure, so a lab test that silently skipped has not passed.
The real-OpenNebula tier (tests/oned) also skips when BMM_ONE_SOURCE names no OpenNebula
source tarball; BMM_REQUIRE_ONED=1, not BMM_REQUIRE_LAB, makes its skips failures, so the lab
suite still runs where no tarball is at hand.
"""

import os
from pathlib import Path

import pytest

REQUIRE_LAB = os.environ.get("BMM_REQUIRE_LAB") == "1"
REQUIRE_ONED = os.environ.get("BMM_REQUIRE_ONED") == "1"
ONED_TESTS = Path(__file__).resolve().parent / "oned"


def _requirement(item) -> str | None:
    """The variable that forbids this item to skip, if any."""
    if ONED_TESTS in Path(str(item.path)).resolve().parents:
        return "BMM_REQUIRE_ONED=1" if REQUIRE_ONED else None
    return "BMM_REQUIRE_LAB=1" if REQUIRE_LAB else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    requirement = _requirement(item)
    if requirement:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under {requirement} (a skip is a failure in CI): {reason}"
