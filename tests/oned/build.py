"""Build a genuine OpenNebula from its source tarball once, and keep the installed tree.

    python -m tests.oned.build --source one-7.4.0.tar.xz      # prints the cached ONE tree

The build takes minutes, and its result depends only on the tarball and the scons options,
so it is cached outside the checkout under <cache>/<key>/, key = sha256 of both. A build runs
in a temporary directory next to the cache and is renamed into place when complete, under an
flock, so two runs never build twice and nobody ever sees a half-built tree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CACHE = Path(os.environ.get("BMM_ONE_CACHE", "/var/cache/bmm/opennebula"))
SCONS_OPTIONS = ("grpc=no", "svncterm=no", "fireedge=no", "systemd=no", "mysql=no", "sqlite=yes")
JOBS = "-j2"
BUILD_PACKAGES = ("g++", "scons", "libxml2-dev", "libssl-dev", "libsqlite3-dev", "zlib1g-dev",
                  "libxmlrpc-c++8-dev", "libcurl4-openssl-dev")
RUBY_PACKAGES = ("ruby", "ruby-nokogiri", "ruby-treetop", "ruby-parse-cron", "ruby-xmlrpc", "ruby-sqlite3",
                 "ruby-ffi-rzmq", "ruby-sequel")
INFO = "BMM-BUILD.json"
LOCK_WAIT_S = 1800        # longer than the slowest build seen (500 s) on a busy machine
BUILD_TIMEOUT_S = 3600
HEARTBEAT_S = 30


class BuildError(RuntimeError):
    pass


def say(message: str, start: float | None = None) -> None:
    elapsed = f" [{time.monotonic() - start:.0f} s]" if start is not None else ""
    print(f"oned-build: {message}{elapsed}", file=sys.stderr, flush=True)


def cache_key(tarball: Path) -> str:
    digest = hashlib.sha256()
    with tarball.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return hashlib.sha256(f"{digest.hexdigest()} {' '.join(SCONS_OPTIONS)}".encode()).hexdigest()[:24]


def missing_packages(packages=BUILD_PACKAGES + RUBY_PACKAGES) -> list[str]:
    missing = []
    for package in packages:
        probe = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in probe.stdout:
            missing.append(package)
    return missing


def ensure_packages() -> None:
    """apt-get install only what dpkg says is missing (the build and the Ruby drivers)."""
    missing = missing_packages()
    if not missing:
        return
    start = time.monotonic()
    say(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(argv[:2])} failed: {proc.stderr.strip()[-2000:]}")
    say("packages installed", start)


def _run_logged(argv: list[str], cwd: Path, log: Path, step: str, start: float) -> None:
    """Run one build step into log, printing a heartbeat while it runs, the log's tail if it fails."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    done = threading.Event()

    def heartbeat():
        while not done.wait(HEARTBEAT_S):
            say(f"{step}: still running", start)

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        rc = proc.wait(timeout=BUILD_TIMEOUT_S)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        done.set()
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(f"{step} failed (exit {rc}); full log {log}\n{tail}")


def _build_into(tarball: Path, work: Path, target: Path, log: Path) -> dict:
    timings = {}
    start = time.monotonic()
    say(f"extracting {tarball.name}")
    src_root = work / "src"
    src_root.mkdir()
    _run_logged(["tar", "-xJf", str(tarball), "-C", str(src_root)], work, log, "extract", start)
    (src,) = [p for p in src_root.iterdir() if p.is_dir()]
    timings["extract_s"] = round(time.monotonic() - start, 1)
    step = time.monotonic()
    say(f"scons {JOBS} {' '.join(SCONS_OPTIONS)} (200-500 s)")
    _run_logged(["scons", JOBS, *SCONS_OPTIONS], src, log, "scons", step)
    timings["scons_s"] = round(time.monotonic() - step, 1)
    say("scons done", step)
    step = time.monotonic()
    say(f"install.sh -d {target}")
    _run_logged(["./install.sh", "-d", str(target)], src, log, "install.sh", step)
    timings["install_s"] = round(time.monotonic() - step, 1)
    say("installed", step)
    return timings


def build(tarball: Path | str, cache: Path = CACHE) -> Path:
    """The cached install tree for tarball, building it first if no complete one exists."""
    tarball = Path(tarball).resolve()
    if not tarball.is_file():
        raise BuildError(f"{tarball} is not a file")
    start = time.monotonic()
    key = cache_key(tarball)
    final = cache / key
    if (final / INFO).is_file():
        say(f"cached build {final}", start)
        return final
    ensure_packages()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{key}.lock").open("a+") as lock:
        if not _lock(lock, final):
            raise BuildError(f"another build of {final} held the lock for more than {LOCK_WAIT_S} s")
        if (final / INFO).is_file():
            say(f"built meanwhile by another run: {final}", start)
            return final
        for stale in cache.glob(f".{key}.tmp-*"):      # a killed build of ours, under our lock
            say(f"removing unfinished build {stale}")
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache))
        log = cache / f"{key}.build.log"
        log.write_text("")
        try:
            target = work / "install"
            timings = _build_into(tarball, work, target, log)
            info = {"tarball": str(tarball), "key": key, "scons": [JOBS, *SCONS_OPTIONS],
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **timings}
            (target / INFO).write_text(json.dumps(info, indent=2) + "\n")
            os.rename(target, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    say(f"build cached in {final}", start)
    return final


def _lock(lock, final: Path) -> bool:
    from bmm.locks import flock_until
    if flock_until(lock.fileno(), time.monotonic()):
        return True
    say(f"waiting for another run building {final}")
    return flock_until(lock.fileno(), time.monotonic() + LOCK_WAIT_S, interval=1, max_interval=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="OpenNebula source tarball (one-X.Y.Z.tar.xz)")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"cache directory (default {CACHE})")
    args = parser.parse_args(argv)
    try:
        print(build(args.source, args.cache))
    except BuildError as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
