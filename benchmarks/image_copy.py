#!/usr/bin/env python3
"""Image delivery benchmark (not a test): bmm against what an operator would type, and against
the disk. Run as root from the repository root; it brings up its own lab (`--nodes` servers,
sshd in network namespaces, LVM on loop devices) and tears it down on every exit path:

    /opt/bmm/bin/python benchmarks/image_copy.py [--size-mb 1024] [--runs 3] [--nodes 8]
        [--transport http] [--compare ssh,session] [--only P1,P2,P5,P6]

Every figure comes from this one run (median of --runs rounds; in each round every candidate
runs once, interleaved, so load from other users of the machine hits them alike):
P1  a fully written raw image into an LV on a node: bmm (deliver_image, --transport) against
      limit     `dd if=IMG of=DEV bs=4M conv=fsync` run on the node itself, no transport (the
                lab's nodes see the front-end's files), timed on the node: the disk's limit;
      openssh   `ssh node 'dd of=DEV bs=4M iflag=fullblock conv=fsync' < IMG`, OpenSSH with its
                default cipher, as an operator types it (aes128-gcm printed too);
    targets: >= 1.0x openssh, >= 0.8x limit.
P2  a 10%-full sparse raw image of the same size: bmm's time against `ssh node dd` of the
    whole file. Target <= 0.15x.
P5  the P1 image to --nodes nodes at once against to one node, wall time, one process per copy
    (as oned runs TM actions); the front-end's CPU per GB (those processes and their children:
    ssh clients) is printed, and the same for the lab's own limit (the nodes' dd at once): the
    lab's nodes share this machine's CPUs and disk. Target <= 1.5x.
P6  a qcow2 on a backing chain (raw base <- qcow2 with 10% rewritten <- qcow2), streamed
    through the pinned chain (bmm.storage.chain) without staging: its throughput against P1's.
The front-end's CPU per GB is printed for each bmm and openssh figure, and the load average
with each section.
"""

from __future__ import annotations

import os
import sys

# Keep this directory off sys.path so nothing here can shadow a stdlib module.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402

from bmm_lab.testing import LabHandle  # noqa: E402
from bmm.storage import chain, delivery  # noqa: E402
from bmm.storage.digests import DigestCache  # noqa: E402
from bmm.transport.ssh import SshSession  # noqa: E402
from tests.lab.node_support import node_lv, node_target  # noqa: E402

MiB = 1 << 20
LIMIT_SH = ('a=$(date +%s%N); dd if="$1" of="$2" bs=4M conv=fsync status=none $3 || exit 1; b=$(date +%s%N); '
            'echo $((b - a))')


def cpu() -> float:
    """CPU seconds of this process and its waited-for children (ssh clients)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


T0 = time.monotonic()


def load() -> str:
    return f"+{time.monotonic() - T0:.0f} s, load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# images

def make_full_image(path: str, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for i in range(0, size, 4 * MiB):
            # vary each block so nothing is accidentally identical or zero
            f.write(i.to_bytes(8, "little") + block[8:min(4 * MiB, size - i)])


def make_sparse_image(path: str, size: int, fill: float = 0.10) -> int:
    """1 MiB of data in every 10 MiB, the rest holes."""
    block = os.urandom(MiB)
    written = 0
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size - MiB + 1, int(MiB / fill)):
            f.seek(off)
            f.write(off.to_bytes(8, "little") + block[8:])
            written += MiB
    return written


def make_chain(ds: str, base: str, size: int) -> str:
    """base (raw) <- mid.qcow2 (every 10th MiB rewritten) <- top.qcow2 (a few writes)."""
    mid, top = os.path.join(ds, "mid.qcow2"), os.path.join(ds, "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.basename(base), "-F", "raw", mid],
                   check=True)
    writes = [f"write -P 0xab {off} 1M" for off in range(0, size - MiB + 1, 10 * MiB)]
    for i in range(0, len(writes), 64):
        argv = ["qemu-io"] + [a for w in writes[i:i + 64] for a in ("-c", w)] + [mid]
        subprocess.run(argv, check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top], check=True)
    subprocess.run(["qemu-io", "-c", "write -z 4M 4M", "-c", f"write -P 0xcd {size // 2} 64k", top],
                   check=True, capture_output=True)
    return top


# ---------------------------------------------------------------------------------------------
# candidates: each returns (seconds, front-end CPU seconds)

def bmm_copy(session, path, fmt, dev, size, transport, ds=None, digests=None):
    """deliver_image; digests: a directory of remembered digests (warmed by an earlier copy)."""
    src = chain.inspect_source(path, fmt, within=ds or os.path.dirname(path))
    c, t = cpu(), time.perf_counter()
    res = delivery.deliver_image(session, path, src.info.format, dev, size, info=src.info, source=src.spec,
                                 transport=transport, timeout=3600, digests=digests and DigestCache(digests))
    if digests and res.hashed:
        raise SystemExit("internal: the remembered digest was not used")
    return time.perf_counter() - t, cpu() - c, res.node_cpu


def node_dd(session, image, dev, direct=False):
    """dd on the node, timed there: no transport, no exec round trip."""
    res = session.run(["sh", "-c", LIMIT_SH, "limit", image, dev, "oflag=direct" if direct else ""], timeout=3600)
    return int(res.stdout.split()[-1]) / 1e9, 0.0, 0.0


def openssh_dd(lab, name, image, dev, cipher=None):
    argv = lab.ssh_argv(name)
    if cipher:
        argv = argv[:1] + ["-c", cipher] + argv[1:]
    c, t = cpu(), time.perf_counter()
    with open(image, "rb") as f:
        subprocess.run(argv + ["--", f"dd of={dev} bs=4M iflag=fullblock conv=fsync status=none"], stdin=f,
                       check=True, timeout=3600)
    return time.perf_counter() - t, cpu() - c, 0.0


def rounds(fns: dict, runs: int) -> dict:
    """{name: (seconds, front-end CPU s, node CPU s)}, medians over interleaved rounds."""
    got = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            got[name].append(fn())
    return {name: tuple(statistics.median(x[i] for x in v) for i in range(3)) for name, v in got.items()}


def mbs(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def show(label: str, nbytes: int, t: tuple) -> None:
    gb = nbytes / 1e9
    per_gb = f", front-end CPU {t[1] / gb:.2f} s/GB" if t[1] else ""
    if t[2]:
        per_gb += f", receiver {t[2] / gb:.2f} s/GB (together: {os.cpu_count() / ((t[1] + t[2]) / gb) * 1e3:.0f}" \
                  f" MB/s on {os.cpu_count()} idle CPUs)"
    print(f"  {label:28s} {mbs(nbytes, t[0]):6.0f} MB/s  {t[0]:6.2f} s{per_gb}", flush=True)


# ---------------------------------------------------------------------------------------------
# P5 workers: one process per copy, as oned runs one TM action per disk

def worker(spec: dict) -> None:
    """Connect to one node, hold an LV open, and run 'copy'/'dd' on each line read from stdin."""
    lab = LabHandle(spec["lab"])
    with SshSession(node_target(lab, spec["node"])) as session, \
            node_lv(lab, spec["node"], session, spec["size"], prefix="bench") as (lv, dev):
        print("READY", flush=True)
        for line in sys.stdin:
            op = line.strip()
            if op == "quit":
                return
            if op == "warmup":
                delivery.deliver_image(session, spec["image"], "raw", dev, lv.size, digests=DigestCache(spec["digests"]))
                t, c, n = 0.0, 0.0, 0.0
            elif op in ("dd", "dd-direct"):
                t, c, n = node_dd(session, spec["image"], dev, direct=op == "dd-direct")
            else:
                transport, _, warm = op.partition("+")
                t, c, n = bmm_copy(session, spec["image"], "raw", dev, lv.size, transport,
                                   digests=spec["digests"] if warm else None)
            print(json.dumps({"seconds": t, "cpu": c, "node_cpu": n, "end": time.time()}), flush=True)


class Workers:
    def __init__(self, lab: LabHandle, names: list[str], image: str, size: int, digests: str, stack: ExitStack):
        self.procs = []
        for name in names:
            spec = json.dumps({"lab": str(lab.dir), "node": name, "image": image, "size": size, "digests": digests})
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", spec],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            stack.callback(self._stop, p)
            self.procs.append(p)
        for p in self.procs:
            if self._line(p, 300) != "READY":
                raise SystemExit("a P5 worker did not start")

    @staticmethod
    def _line(p, timeout: float) -> str:
        if not select.select([p.stdout], [], [], timeout)[0]:
            raise SystemExit(f"a P5 worker gave no answer within {timeout:g} s")
        return p.stdout.readline().strip()

    @staticmethod
    def _stop(p) -> None:
        try:
            p.stdin.write("quit\n")
            p.stdin.close()
            p.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            p.kill()
            p.wait()

    def run(self, op: str, n: int) -> tuple[float, float, float]:
        """op on the first n workers at once: (wall seconds, summed front-end and node CPU s)."""
        t = time.time()
        for p in self.procs[:n]:
            p.stdin.write(op + "\n")
        results = [json.loads(self._line(p, 3600)) for p in self.procs[:n]]
        return max(r["end"] for r in results) - t, sum(r["cpu"] for r in results), sum(r["node_cpu"] for r in results)


# ---------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--transport", default="http", choices=delivery.TRANSPORTS, help="bmm's transport")
    ap.add_argument("--compare", default="ssh", help="more bmm transports for P1/P5, comma-separated")
    ap.add_argument("--only", default="P1,P2,P5,P6")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces, loop devices, LVM)")
    only = set(args.only.upper().split(","))
    others = [t for t in args.compare.split(",") if t and t != args.transport]
    size = args.size_mb * MiB
    print(f"start: {load()}, {os.cpu_count()} CPUs", flush=True)
    with ExitStack() as stack:
        work = tempfile.mkdtemp(prefix="bmmbench-", dir="/var/tmp")     # the nodes see /var/tmp
        stack.callback(shutil.rmtree, work, True)
        full, sparse = os.path.join(work, "full.raw"), os.path.join(work, "sparse.raw")
        make_full_image(full, size)
        data = make_sparse_image(sparse, size)
        # each candidate fsyncs its target; only the images' own dirty pages must go first (a
        # global sync would wait for everything other users of the machine are writing)
        subprocess.run(["sync", full, sparse], check=True)
        lab = LabHandle.up(servers=args.nodes if "P5" in only else 1, boards=0)
        stack.callback(lab.down, purge=True)
        name = lab.servers[0]
        print(f"lab {lab.id}: {len(lab.servers)} nodes; images {size // MiB} MiB (sparse: {data // MiB} MiB of data);"
              f" bmm transport {args.transport}; {args.runs} rounds, medians", flush=True)
        p1 = None
        with SshSession(node_target(lab, name)) as session, node_lv(lab, name, session, size, prefix="bench") as (lv, dev):
            if "P1" in only:
                print(f"P1 full raw image -> {lv.size // MiB} MiB LV on {name} ({load()})")
                warm = os.path.join(work, "digests")
                delivery.deliver_image(session, full, "raw", dev, lv.size, digests=DigestCache(warm))
                fns = {"limit (dd, buffered)": lambda: node_dd(session, full, dev),
                       "limit (dd, oflag=direct)": lambda: node_dd(session, full, dev, direct=True),
                       "openssh": lambda: openssh_dd(lab, name, full, dev),
                       "openssh aes128-gcm": lambda: openssh_dd(lab, name, full, dev, "aes128-gcm@openssh.com"),
                       f"bmm {args.transport}": lambda: bmm_copy(session, full, "raw", dev, lv.size, args.transport),
                       f"bmm {args.transport}, digest known": lambda: bmm_copy(session, full, "raw", dev, lv.size,
                                                                               args.transport, digests=warm)}
                for t in others:
                    fns[f"bmm {t}"] = lambda t=t: bmm_copy(session, full, "raw", dev, lv.size, t)
                r = rounds(fns, args.runs)
                p1 = r[f"bmm {args.transport}"]
                for label, t in r.items():
                    show(label, size, t)
                limit = min(r["limit (dd, buffered)"][0], r["limit (dd, oflag=direct)"][0])
                for label in (f"bmm {args.transport}", f"bmm {args.transport}, digest known"):
                    print(f"  => {label}: /openssh {r['openssh'][0] / r[label][0]:.2f}x (target >= 1.0), "
                          f"/limit {limit / r[label][0]:.2f}x (target >= 0.8)")
                print(f"  [{load()}]", flush=True)
            if "P2" in only:
                print(f"P2 10%-full sparse image ({load()})")
                r = rounds({"openssh full dd": lambda: openssh_dd(lab, name, sparse, dev),
                            f"bmm {args.transport}": lambda: bmm_copy(session, sparse, "raw", dev, lv.size,
                                                                      args.transport)}, args.runs)
                b, o = r[f"bmm {args.transport}"][0], r["openssh full dd"][0]
                print(f"  bmm {b:.2f} s, openssh dd of the whole file {o:.2f} s => {b / o:.3f}x (target <= 0.15)"
                      f"   [{load()}]", flush=True)
            if "P6" in only:
                print(f"P6 qcow2 on a backing chain ({load()})")
                top = make_chain(work, full, size)
                subprocess.run(["sync"] + [os.path.join(work, f) for f in ("mid.qcow2", "top.qcow2")], check=True)
                src = chain.inspect_source(top, "qcow2", within=work)
                print(f"  chain: {' <- '.join(os.path.basename(layer.path) for layer in reversed(src.layers))}")
                fns = {f"bmm {args.transport} chain": lambda: bmm_copy(session, top, "qcow2", dev, lv.size,
                                                                        args.transport, ds=work)}
                if p1 is None:
                    fns[f"bmm {args.transport} raw (P1)"] = lambda: bmm_copy(session, full, "raw", dev, lv.size,
                                                                            args.transport)
                r = rounds(fns, args.runs)
                p6 = r[f"bmm {args.transport} chain"]
                p1 = p1 or r[f"bmm {args.transport} raw (P1)"]
                show(f"bmm {args.transport} chain", size, p6)
                print(f"  => chain/P1 throughput {p1[0] / p6[0]:.2f}x   [{load()}]", flush=True)
        if "P5" in only:
            n = len(lab.servers)
            print(f"P5 {n} copies at once against 1, one process per copy ({load()})")
            warm = os.path.join(work, "digests")
            workers = Workers(lab, lab.servers, full, size, warm, stack)
            workers.run("warmup", 1)             # remembers the image's digest in warm, for "+warm"
            for op in ["dd", "dd-direct", args.transport, f"{args.transport}+warm"] + others:
                got = {1: [], n: []}
                for _ in range(args.runs):
                    for k in (1, n):
                        got[k].append(workers.run(op, k))
                one, many = (tuple(statistics.median(x[i] for x in got[k]) for i in range(3)) for k in (1, n))
                label = {"dd": "limit (dd)", "dd-direct": "limit (dd direct)"}.get(op, f"bmm {op}")
                cpu_note = (f"; CPU s/GB (1 / {n}): front-end {one[1] / (size / 1e9):.2f} / "
                            f"{many[1] / (n * size / 1e9):.2f}, receivers {one[2] / (size / 1e9):.2f} / "
                            f"{many[2] / (n * size / 1e9):.2f}" if not op.startswith("dd") else "")
                print(f"  {label:24s} 1: {one[0]:6.2f} s ({mbs(size, one[0]):4.0f} MB/s)  {n}: {many[0]:6.2f} s "
                      f"({mbs(n * size, many[0]):4.0f} MB/s in all) => {many[0] / one[0]:.2f}x (target <= 1.5)"
                      f"{cpu_note}   [{load()}]", flush=True)
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
