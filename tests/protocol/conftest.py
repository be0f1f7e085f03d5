import textwrap

import pytest

from tests.onemock import OpenNebula
from tests.support import stop_monitor_daemon


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "nodes.toml"
    path.write_text(textwrap.dedent("""\
        [nodes.fake01]
        kind = "fake"
        arch = "x86_64"
        model = "Test Machine"
        cpus = 8
        memory_mb = 4096
        disk_gb = 100
        macs = ["52:54:00:00:00:01"]
        ip = "192.0.2.10"
        [nodes.fake01.ssh]
        address = "192.0.2.10"
        [nodes.fake01.power]
        driver = "manual"
        [nodes.fake01.hardware]
        fpga = "Xilinx Virtex-5 LX330"
        accelerators = ["Convey HC-2ex"]
        """))
    return path


@pytest.fixture
def one(tmp_path, inventory):
    """OpenNebula's drivers around an installed bmm; no monitor daemon survives the test."""
    one = OpenNebula(tmp_path / "one", inventory)
    yield one
    stop_monitor_daemon(one.state_dir)
