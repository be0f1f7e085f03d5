"""Benchmark: wall time of `bmm lab up` and `bmm lab down` (targets: up <= 20 s, down <= 10 s
for 4 servers + 4 boards). Prints figures; it is not a timed test.

    python3 benchmarks/lab.py [--servers 4] [--boards 4] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

# keep the script's own dir off sys.path, so nothing in benchmarks/ shadows a stdlib module
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

from bmm_lab import rack  # noqa: E402
from bmm_lab.testing import leftovers  # noqa: E402

UP_TARGET_S = 20.0
DOWN_TARGET_S = 10.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--boards", type=int, default=None, help="default 4 when the board half is built, else 0")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true", help="print up/down progress lines")
    args = ap.parse_args()
    boards = args.boards if args.boards is not None else (4 if rack.board_module() else 0)
    ups, downs = [], []
    for i in range(args.repeat):
        d = tempfile.mkdtemp(prefix="bmmlab-bench-", dir="/var/tmp")
        say = print if args.verbose else (lambda m: None)
        t0 = time.monotonic()
        try:
            lab = rack.up(d, servers=args.servers, boards=boards, say=say)
            ups.append(time.monotonic() - t0)
        finally:
            t1 = time.monotonic()
            rep = rack.down(d, say=say)
            downs.append(time.monotonic() - t1)
        left = leftovers(rep["id"], d) if rep.get("id") else {}
        import shutil
        shutil.rmtree(d, ignore_errors=True)
        print(f"run {i + 1}: lab {lab['id']} {args.servers} servers + {boards} boards: "
              f"up {ups[-1]:.2f} s, down {downs[-1]:.2f} s" + (f", LEFTOVERS {left}" if left else ""))
    up_s, down_s = statistics.median(ups), statistics.median(downs)
    print(f"bmm lab up   ({args.servers} servers + {boards} boards): {up_s:6.2f} s  (target <= {UP_TARGET_S:g} s)"
          f"  {'OK' if up_s <= UP_TARGET_S else 'OVER'}")
    print(f"bmm lab down ({args.servers} servers + {boards} boards): {down_s:6.2f} s  (target <= {DOWN_TARGET_S:g} s)"
          f"  {'OK' if down_s <= DOWN_TARGET_S else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
