"""Fixtures for the real-OpenNebula tier: a genuine oned, monitord and scheduler built from
BMM_ONE_SOURCE (tests/oned/build.py, cached), driving bmm's installed remotes against the
lab's servers and a board, driven through pyone. bmm's objects in oned are made by
`bmm one register`, as README.md tells an operator.

The lab has a netboot board, so it starts an nfs-ganesha: run the tier on its own, or under
`flock /tmp/bmm-board-lab.lock` when other board labs may run on the machine.

Everything here is package-scoped: one lab, one front-end and one cloud set-up for the whole
tier, torn down when its last test ends, whatever happened (failure, Ctrl-C, SIGTERM; an
atexit hook stops front-ends still running if the process dies in an orderly way).

The tier skips, with the reason, when BMM_ONE_SOURCE is unset or names no file, or when the
lab cannot run here; BMM_REQUIRE_ONED=1 turns those skips into failures (tests/conftest.py).

Environment: BMM_ONE_SOURCE (the tarball), BMM_ONED_KEEP_DIR=1 keeps the session directory
(ONE_LOCATION with oned.log and the VM logs, bmm's state) after the tier.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.conftest import LAB_TOOLS, lab_session
from tests.oned.cloud import Cloud, Template
from tests.oned.machine import Machine
from tests.support import REPO, require_lab

SOURCE_ENV = "BMM_ONE_SOURCE"
KEEP_ENV = "BMM_ONED_KEEP_DIR"
# One lab server per scenario, so independent scenarios never share a machine.
ROLES = (
    "sched1", "sched2",                    # scheduler placement and the everyday life cycle
    "fallback", "outside_off",             # power changed behind OpenNebula's back
    "reboot", "reset",                     # reboot / reboot --hard watched for POWEROFF
    "undeploy", "attach_running", "attach_poweroff",
    "qcow2", "occupied_delete", "occupied_terminate",
    "leaked",                              # a VM oned forgets: `bmm one reconcile --fix`
)
BOARDS = 2                                 # board1 boots an NFS root, board2 two-stage TFTP
# bmm.toml: waits sized for the lab (a lab server boots in about 1.5 s)
BMM_SETTINGS = {"ssh_wait_s": 60, "boot_wait_s": 60, "power_timeout_s": 30}
_live: dict[str, object] = {}


def _stop_all_at_exit() -> None:
    for fe in list(_live.values()):
        try:
            fe.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


atexit.register(_stop_all_at_exit)


def one_source() -> Path:
    raw = os.environ.get(SOURCE_ENV, "")
    if not raw:
        pytest.skip(f"{SOURCE_ENV} is not set (it names OpenNebula's source tarball, e.g. one-7.4.0.tar.xz)")
    path = Path(raw).resolve()
    if not path.is_file():
        pytest.skip(f"{SOURCE_ENV}={raw} is not a file")
    return path


@pytest.fixture(scope="package")
def sigterm_tears_down():
    """While the tier runs, SIGTERM (a CI job cancelled) tears down like Ctrl-C, so the lab
    and the front-end are stopped instead of left running."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="package")
def one_install(sigterm_tears_down) -> Path:
    """The cached OpenNebula install tree (built on first use; minutes)."""
    source = one_source()
    require_lab(*LAB_TOOLS, "qemu-img", "ssh-keygen")
    from tests.oned.build import build
    return build(source)


@pytest.fixture(scope="package")
def lab(one_install):
    yield from lab_session(servers=len(ROLES), boards=BOARDS)


@pytest.fixture(scope="package")
def frontend(one_install, lab):
    """oned + monitord + scheduler in a fresh ONE_LOCATION, bmm installed, always stopped."""
    from tests.oned.frontend import Frontend
    fe = Frontend.create(one_install)
    _live[str(fe.dir)] = fe
    try:
        fe.install_bmm(REPO, lab.inventory, BMM_SETTINGS)
        fe.start()
        yield fe
    finally:
        try:
            fe.stop()
        finally:
            _live.pop(str(fe.dir), None)
            if os.environ.get(KEEP_ENV) == "1":
                fe.keep()
            else:
                fe.purge()


@dataclass
class Registered:
    """What `bmm one register` did when the tier set up its cloud: the dry run first, then the
    real run, each with the objects oned had before and after it."""
    dry_run: subprocess.CompletedProcess
    before_dry_run: dict
    after_dry_run: dict
    run: subprocess.CompletedProcess
    after_run: dict


@pytest.fixture(scope="package")
def registered(frontend) -> Registered:
    """`bmm one register --dry-run`, then `bmm one register`, on the fresh oned."""
    probe = Cloud(frontend, frontend.bmm_config)
    before = probe.objects()
    dry = frontend.bmm("one", "register", "--dry-run")
    after_dry = probe.objects()
    run = frontend.bmm("one", "register")
    if run.returncode != 0:
        raise RuntimeError(f"bmm one register failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return Registered(dry, before, after_dry, run, probe.objects())


@pytest.fixture(scope="package")
def cloud(frontend, registered) -> Cloud:
    """What `bmm one register` made, the network, and every host MONITORED."""
    c = Cloud(frontend, frontend.bmm_config)
    c.adopt()
    c.wait_hosts_monitored(list(c.hosts))
    return c


@pytest.fixture(scope="package")
def tenant_key(frontend) -> Path:
    """The user's ssh key, handed to the tenant through CONTEXT/SSH_PUBLIC_KEY."""
    key = frontend.dir / "alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@bmm-test", "-f", str(key)],
                   check=True, timeout=30)
    return key


@pytest.fixture(scope="package")
def images_dir(frontend) -> Path:
    """Where images are built: under /var/tmp, the fs datastore's default SAFE_DIRS."""
    d = frontend.dir / "images"
    d.mkdir()
    return d


@pytest.fixture(scope="package")
def tenant_image(cloud, images_dir) -> int:
    """The tenant OS (busybox, os-release ID=tenantos) registered in bm_images."""
    from bmm_lab.images import build_image
    path = build_image(images_dir / "tenant.img", os_id="tenantos", name="Tenant OS", version="42",
                       layout="fs", size="48M")
    return cloud.register_image(Path(path), "tenant-os")


@pytest.fixture(scope="package")
def template(cloud, lab, tenant_image, tenant_key) -> Template:
    """The template `bmm one register` made for the lab servers' model, with the tenant image,
    the network and a CONTEXT added at each instantiate."""
    from bmm.config import load_config
    from bmm.inventory import node_for_host
    from bmm.opennebula.register import template_name
    model = node_for_host(load_config(cloud.bmm_config), lab.servers[0]).model
    return Template(cloud.template_named(template_name(model)),
                    cloud.extra(tenant_image, tenant_key.with_suffix(".pub").read_text().strip()))


@pytest.fixture(scope="package")
def machines(lab, cloud, tenant_key) -> dict[str, Machine]:
    """role -> the lab server reserved for it (see ROLES)."""
    return {role: Machine(lab, lab.servers[i], tenant_key, cloud.bmm_config) for i, role in enumerate(ROLES)}
