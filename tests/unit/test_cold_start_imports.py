"""What a remote loads before it talks to a machine stays light (P4, benchmarks/cold_start.py
times it). Structural, not timed: each entry is imported in a fresh interpreter and the heavy
libraries must not be among its modules. Each was once on this path and cost a cold start
between 20 and 150 ms."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# library -> why it must wait until it is used
HEAVY = {
    "paramiko": "ssh: imported where a connection is made (it pulls in invoke, asyncio, unittest.mock)",
    "invoke": "pulled in by paramiko",
    "cryptography": "pulled in by paramiko",
    "lxml": "driver input is parsed by the standard library's expat (bmm.opennebula.xmlsafe)",
    "importlib.metadata": "bmm.__version__ is a literal",
    "pyone": "only the `bmm one` commands talk to oned",
    "click": "only the `bmm` command",
    "pexpect": "only a PDU session",
    "asyncio": "nothing on this path is asynchronous",
}

# what poll (VMM/TM remotes, both kinds) and the IM control script import before their action
ENTRIES = {
    "vmm/tm remotes": ["vmm_drivers.entry", "vmm_drivers.localdisk", "vmm_drivers.netboot"],
    "IM control": ["im_drivers.control", "im_drivers.messages", "vmm_drivers.localdisk", "vmm_drivers.netboot"],
}

PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(modules: list[str]) -> set[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, env=env,
                         cwd="/", timeout=120, check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_a_remote_does_not_load_heavy_libraries_before_its_action(entry):
    loaded = loaded_by(ENTRIES[entry])
    found = {lib: why for lib, why in HEAVY.items()
             if any(m == lib or m.startswith(lib + ".") for m in loaded)}
    assert not found, f"{entry} loads {', '.join(found)}: " + "; ".join(f"{k}: {v}" for k, v in found.items())
    assert {"bmm", "vmm_drivers.entry" if entry != "IM control" else "im_drivers.control"} <= loaded


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: a module that imports paramiko is seen."""
    assert "paramiko" in loaded_by(["paramiko"])


def test_ssh_brings_paramiko_without_invoke():
    """paramiko needs invoke only for ssh_config's `Match exec`, which bmm never reads."""
    code = ("import json, sys; from bmm.transport import ssh; ssh._paramiko(); "
            "print(json.dumps(['paramiko' in sys.modules, repr(sys.modules.get('invoke', 'absent')), "
            "'asyncio' in sys.modules]))")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/",
                         timeout=120, check=True).stdout
    assert json.loads(out) == [True, "None", False]     # invoke: the None that blocks its import
