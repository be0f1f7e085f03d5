"""A separate process for the state and lock tests (run with the repo on PYTHONPATH).

    state_child.py DB hold NODE ACTION VM SECONDS    lock, print "LOCKED <pid>", sleep, release
    state_child.py DB race NODE ACTION VM GO WAIT     wait for file GO, try the lock for WAIT s:
                                                      print "WON <pid>" (then hold 30 s) or
                                                      "LOST <message>"
    state_child.py DB enter NODE STATE VM MODE        transition to STATE (vm VM), print
                                                      "ENTERED <pid>", then MODE: exit (leave
                                                      the state behind), sleep (holding the
                                                      lock until killed) or linger (release the
                                                      lock, print "RELEASED", sleep)
"""

import os
import sys
import time

from bmm.errors import LockedError
from bmm.state import StateStore


def main() -> None:
    db, mode, node = sys.argv[1], sys.argv[2], sys.argv[3]
    store = StateStore(db)
    if mode == "hold":
        action, vm, seconds = sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
        with store.lock(node, action, vm_id=vm, wait=5):
            print(f"LOCKED {os.getpid()}", flush=True)
            time.sleep(seconds)
    elif mode == "race":
        action, vm, go, wait = sys.argv[4], int(sys.argv[5]), sys.argv[6], float(sys.argv[7])
        deadline = time.monotonic() + 20
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.005)
        try:
            with store.lock(node, action, vm_id=vm, wait=wait):
                print(f"WON {os.getpid()}", flush=True)
                time.sleep(30)  # until the test has heard both sides and kills it
        except LockedError as exc:
            print(f"LOST {exc}", flush=True)
    elif mode == "enter":
        state, vm, after = sys.argv[4], int(sys.argv[5]), sys.argv[6]
        with store.lock(node, state, vm_id=vm, wait=5):
            store.transition(node, state, vm_id=vm, action=state)
            print(f"ENTERED {os.getpid()}", flush=True)
            if after == "sleep":
                time.sleep(60)
        if after == "linger":  # the lock is released, the owner lives on
            print("RELEASED", flush=True)
            time.sleep(60)
        os._exit(0)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
