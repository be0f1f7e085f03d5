"""Helpers shared by the tests."""

import os
import shutil
import subprocess

import pytest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def missing_lab_requirements(*tools: str) -> list[str]:
    """What this machine lacks to run lab tests (empty when everything is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/dev/loop-control"):
        missing.append("loop devices (/dev/loop-control)")
    if shutil.which("ip") is None:
        missing.append("iproute2 (ip)")
    else:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
        if probe.returncode != 0:
            missing.append("network namespaces")
    for tool in tools:
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def require_lab(*tools: str) -> None:
    missing = missing_lab_requirements(*tools)
    if missing:
        pytest.skip("lab test needs " + ", ".join(missing))
