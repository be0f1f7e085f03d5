#!/usr/bin/env python3
"""Image copy benchmark (not a test). Run as root from the repository root:

    python3 benchmarks/image_copy.py [--size-mb 384] [--runs 3] [--ssh] [--ssh-target user@host:port --key K]

P1  throughput of copy_image_to_lv for a fully written raw image, against `dd` of the same
    image to the same kind of target (an LV reached through a loop device at its offset on a
    loop-backed PV, the lab's LVM without device-mapper). Two dd baselines:
      dd/stream  the same bytes through the same executor into `dd of=DEV bs=4M` on the node
                 (what `cat img | ssh node dd of=/dev/vg/lv` costs: the honest comparison);
      dd/local   `dd if=IMG of=DEV bs=4M conv=fsync` on the same machine, no transport at all
                 (only meaningful locally; printed for reference).
P2  a 10%-full sparse image: copy_image_to_lv time against a full dd of it.

Every figure comes from this run (median of --runs). With --ssh the benchmark also starts a
private sshd on 127.0.0.1 (own host key, own authorized_keys, killed by PID at the end) and
repeats P1/P2 through bmm.transport.ssh.SshSession. --ssh-target runs them against an existing
node instead (it must see the same device path, e.g. run there with --device).
"""

from __future__ import annotations

import os
import sys

# Keep this directory off sys.path so nothing here can shadow a stdlib module.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager

from bmm.storage import lvm, stream  # noqa: E402
from bmm.transport.ssh import SshSession, SshTarget  # noqa: E402
from tests.lab.lvm_support import lab_vg  # noqa: E402

MiB = 1 << 20


def make_full_image(path: str, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for i in range(0, size, 4 * MiB):
            # vary each block so nothing is accidentally identical or zero
            f.write(i.to_bytes(8, "little") + block[8:min(4 * MiB, size - i)])


def make_sparse_image(path: str, size: int, fill: float = 0.10) -> int:
    """Data scattered over the image: 1 MiB of data in every 10 MiB, rest holes."""
    block = os.urandom(MiB)
    written = 0
    with open(path, "wb") as f:
        f.truncate(size)
        step = int(MiB / fill)
        for off in range(0, size - MiB + 1, step):
            f.seek(off)
            f.write(off.to_bytes(8, "little") + block[8:])
            written += MiB
    return written


def dd_stream(ex, image: str, dev: str) -> None:
    f = open(image, "rb")

    def source():
        data = f.read(4 * MiB)
        return data or None
    try:
        ex.run_stream_in(["dd", f"of={dev}", "bs=4M", "iflag=fullblock", "conv=fsync", "status=none"],
                         source, timeout=600)
    finally:
        f.close()


def dd_local(image: str, dev: str) -> None:
    """dd straight from the file; on the front-end == node case only (no transport)."""
    subprocess.run(["dd", f"if={image}", f"of={dev}", "bs=4M", "conv=fsync", "status=none"], check=True)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(fns: dict, runs: int) -> dict:
    """Run each candidate once per round, rounds interleaved so load from other users of the
    machine hits all of them alike; returns {name: (median, best)} seconds."""
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            subprocess.run(["sync"], check=True)
            times[name].append(timed(fn))
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def bench(label: str, ex, full: str, sparse: str, dev: str, size: int, runs: int, local: bool) -> None:
    print(f"== {label} (image {size // MiB} MiB, {runs} interleaved rounds; median, best in brackets)")
    for image, tag in ((full, "P1"), (sparse, "P2")):
        fns = {f"copy[{rcv}]": (lambda rcv=rcv: stream.copy_image_to_lv(ex, image, "raw", dev, size,
                                                                          receiver=rcv, timeout=600))
               for rcv in ("python", "dd")}
        fns["dd/stream"] = lambda: dd_stream(ex, image, dev)
        if local:
            fns["dd/local"] = lambda: dd_local(image, dev)
        t = interleaved(fns, runs)
        for rcv in ("python", "dd"):
            c_med, c_best = t[f"copy[{rcv}]"]
            for base in ("dd/stream", "dd/local"):
                if base not in t:
                    continue
                d_med, d_best = t[base]
                if tag == "P1":
                    print(f"P1 copy[{rcv}] {mbps(size, c_med):.0f} MB/s [{mbps(size, c_best):.0f}], "
                          f"{base} {mbps(size, d_med):.0f} MB/s [{mbps(size, d_best):.0f}], "
                          f"ratio {d_med / c_med:.2f} [{d_best / c_best:.2f}] (target >= 0.9)")
                else:
                    print(f"P2 sparse copy[{rcv}] {c_med:.3f} s [{c_best:.3f}], full {base} {d_med:.3f} s "
                          f"[{d_best:.3f}], ratio {c_med / d_med:.2f} [{c_best / d_best:.2f}] (target <= 0.25)")
        sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_sshd(workdir: str):
    """sshd on 127.0.0.1:<free port> accepting only a fresh key; killed by PID on exit."""
    d = os.path.join(workdir, "sshd")
    os.makedirs(d)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/hostkey"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/client"], check=True)
    shutil.copy(f"{d}/client.pub", f"{d}/authorized_keys")
    port = free_port()
    with open(f"{d}/sshd_config", "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n"
                f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{d}/sshd_config"],
                            stdout=subprocess.DEVNULL, stderr=open(f"{d}/sshd.log", "w"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("private sshd did not start")
                time.sleep(0.1)
        yield SshTarget("127.0.0.1", port, "root", key_file=f"{d}/client", host_key_policy="ignore",
                        node="bench")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=384)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ssh", action="store_true", help="also run through a private sshd on 127.0.0.1")
    ap.add_argument("--ssh-target", help="user@host:port of a node that sees --device")
    ap.add_argument("--key", help="ssh key for --ssh-target")
    ap.add_argument("--device", help="with --ssh-target: the node's target device (its contents are destroyed)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (loop devices, LVM)")
    size = args.size_mb * MiB
    work = tempfile.mkdtemp(prefix="bmmbench-")
    try:
        full, sparse = os.path.join(work, "full.raw"), os.path.join(work, "sparse.raw")
        make_full_image(full, size)
        data = make_sparse_image(sparse, size)
        print(f"images: full {size // MiB} MiB, sparse {size // MiB} MiB with {data // MiB} MiB of data")
        if args.ssh_target:
            userhost, _, port = args.ssh_target.rpartition(":")
            user, _, host = userhost.rpartition("@")
            target = SshTarget(host, int(port or 22), user or "root", key_file=args.key, host_key_policy="ignore")
            with SshSession(target) as ex:
                bench(f"ssh {target.describe()}", ex, full, sparse, args.device, size, args.runs, local=False)
            return
        with lab_vg(size + 64 * MiB, node="bench") as lab:
            lv = lvm.create_lv(lab.ex, lab.vg, "bench", size)
            with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
                print(f"target: LV {lab.vg}/{lv.name} through {dev} at its offset on PV {lab.pv}")
                bench("local (LocalExecutor)", lab.ex, full, sparse, dev, lv.size, args.runs, local=True)
                if args.ssh:
                    with private_sshd(work) as target, SshSession(target) as ex:
                        bench(f"ssh {target.describe()} (paramiko, private sshd)", ex, full, sparse, dev,
                              lv.size, args.runs, local=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
