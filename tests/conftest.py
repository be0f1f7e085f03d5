"""Test-suite policy.

Lab tests need root, loop devices, network namespaces and the peers' programs. Without them
they skip with the reason. CI (and anyone who wants proof) sets BMM_REQUIRE_LAB=1: then every
skip is turned into a failure, so a lab test that silently skipped has not passed.
"""

import os

import pytest

REQUIRE_LAB = os.environ.get("BMM_REQUIRE_LAB") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_LAB and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under BMM_REQUIRE_LAB=1 (a skip is a failure in CI): {reason}"
