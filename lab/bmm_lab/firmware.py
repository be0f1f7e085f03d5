"""The lab daemon ("firmware"): one per lab, `python -m bmm_lab.firmware --dir DIR`.

It holds every machine's power state and serves DIR/firmware.sock: one JSON request line per
connection, one JSON answer line (see docs/lab-internals.md). The ipmi_sim chassis hooks, the
PDU threads and the shims inside the nodes all change power through it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from bmm_lab import LabError, addresses
from bmm_lab.machine import Machine
from bmm_lab import state as labstate

SOCKET = "firmware.sock"
PIDFILE = "firmware.pid"
LOGFILE = "firmware.log"
ACTIONS = ("status", "on", "off", "reset", "cycle", "soft")




# ------------------------------------------------------------------ client side

def socket_path(lab_dir: Path | str) -> Path:
    return Path(lab_dir) / SOCKET


def call(lab_dir: Path | str, request: dict, *, timeout: float = 15.0) -> dict:
    """Send one request to the lab daemon and return its answer (raise LabError on failure)."""
    path = socket_path(lab_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            if time.monotonic() > deadline:
                raise socket.timeout()
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise LabError(f"the lab daemon is not running ({path} does not answer)") from None
    except socket.timeout:
        raise LabError(f"the lab daemon did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise LabError(f"cannot talk to the lab daemon at {path}: {exc.strerror or exc}") from None
    finally:
        s.close()
    try:
        answer = json.loads(buf.decode())
    except json.JSONDecodeError:
        raise LabError("the lab daemon gave a garbled answer") from None
    if not answer.get("ok"):
        raise LabError(answer.get("error") or "the lab daemon refused", node=request.get("node"))
    return answer


def alive(lab_dir: Path | str, timeout: float = 2.0) -> dict | None:
    try:
        return call(lab_dir, {"op": "ping"}, timeout=timeout)
    except LabError:
        return None


# ------------------------------------------------------------------ the daemon

class Firmware:
    """The daemon's world: the lab, its machines, its child processes."""

    def __init__(self, lab_dir: Path):
        self.dir = lab_dir
        self.lab = labstate.load(lab_dir)
        self.machines: dict[str, Machine] = {}
        self.stopping = threading.Event()
        self._children: list[tuple[str, subprocess.Popen]] = []
        self._handles: list = []
        self._log_lock = threading.Lock()
        self._t0 = time.monotonic()

    # services for machines and the board half
    def log(self, msg: str) -> None:
        with self._log_lock:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            sys.stderr.flush()

    def board_port(self, i: int) -> int:
        return addresses.board_port(self.lab, i)

    def machine_for_outlet(self, outlet: int) -> Machine:
        for n in self.lab["nodes"]:
            if n.get("outlet") == outlet and n["name"] in self.machines:
                return self.machines[n["name"]]
        raise LabError(f"no machine on outlet {outlet}")

    def spawn(self, argv: list[str], name: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen([str(a) for a in argv], **kw)
        self._children.append((name, proc))
        return proc

    # lifecycle
    def start(self) -> None:
        from bmm_lab import bmc, server
        board_mod = _optional("bmm_lab.netboot")
        pdu_mod = _optional("bmm_lab.pdu")
        if board_mod is not None and hasattr(board_mod, "start"):
            self._handles.append(board_mod.start(self))
        for node in self.lab["nodes"]:
            if node["kind"] == "localdisk":
                self.machines[node["name"]] = server.Server(self, node)
                bmc.start(self, node)
            elif board_mod is not None and hasattr(board_mod, "make_machine"):
                self.machines[node["name"]] = board_mod.make_machine(self, node)
            else:
                self.log(f"{node['name']}: no board support (bmm_lab.netboot.make_machine); skipped")
        if pdu_mod is not None and hasattr(pdu_mod, "start") and any(
                n["kind"] == "netboot" for n in self.lab["nodes"]):
            self._handles.append(pdu_mod.start(self))

    def shutdown(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.log("shutting down: every machine off")
        threads = [threading.Thread(target=_quiet(m.close), daemon=True) for m in self.machines.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        for h in reversed(self._handles):
            _quiet(getattr(h, "stop", lambda: None))()
        for name, proc in self._children:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for name, proc in self._children:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=2)

    # requests
    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "id": self.lab["id"], "pid": os.getpid(), "dir": str(self.dir)}
        if op == "status":
            nodes = {}
            for name, m in self.machines.items():
                nodes[name] = {"power": bool(m.powered()), "state": m.state(), "detail": m.detail()}
            return {"ok": True, "nodes": nodes}
        if op == "shutdown":
            threading.Thread(target=self._shutdown_and_exit, daemon=True).start()
            return {"ok": True}
        name = req.get("node")
        m = self.machines.get(name)
        if m is None:
            return {"ok": False, "error": f"no machine {name!r} in this lab"}
        if op == "power":
            action = req.get("action")
            if action not in ACTIONS:
                return {"ok": False, "error": f"unknown power action {action!r} (one of {', '.join(ACTIONS)})"}
            if self.stopping.is_set() and action != "status":
                return {"ok": False, "error": "the lab is shutting down"}
            if action == "on":
                m.power_on()
            elif action == "off":
                m.power_off()
            elif action == "reset":
                m.reset()
            elif action == "cycle":
                m.power_off()
                time.sleep(float(req.get("interval", 0)))
                m.power_on()
            elif action == "soft":
                m.soft_off()
            return {"ok": True, "power": bool(m.powered()), "state": m.state()}
        if op == "os":
            action = req.get("action")
            if action not in ("reboot", "poweroff"):
                return {"ok": False, "error": f"unknown os action {action!r}"}
            threading.Thread(target=_quiet(lambda: m.os_request(action)), daemon=True).start()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _shutdown_and_exit(self) -> None:
        self.shutdown()
        _server_ref[0].shutdown()


_server_ref: list = [None]


def _quiet(fn):
    def wrapper():
        try:
            fn()
        except Exception:  # noqa: BLE001 - daemon threads must not die silently
            traceback.print_exc()
    return wrapper


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        fw: Firmware = self.server.fw
        try:
            line = self.rfile.readline(65536)
            req = json.loads(line.decode() or "{}")
            answer = fw.handle(req)
        except LabError as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            traceback.print_exc()
            answer = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        try:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bmm_lab.firmware", description=__doc__)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--tag", default="", help="bmmlab-<id>: names the lab in ps output")
    args = ap.parse_args(argv)
    lab_dir = Path(args.dir).resolve()
    fw = Firmware(lab_dir)
    sock = socket_path(lab_dir)
    (lab_dir / "firmware.error").unlink(missing_ok=True)
    if sock.exists():
        sock.unlink()
    (lab_dir / PIDFILE).write_text(f"{os.getpid()}\n")
    srv = _Server(str(sock), _Handler)
    os.chmod(sock, 0o600)
    srv.fw = fw
    _server_ref[0] = srv

    def on_signal(signum, frame):
        threading.Thread(target=fw._shutdown_and_exit, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        fw.start()
    except Exception as exc:  # noqa: BLE001
        fw.log(f"start failed: {exc}")
        (lab_dir / "firmware.error").write_text(f"{exc}\n")
        traceback.print_exc()
        fw.shutdown()
        sock.unlink(missing_ok=True)
        return 1
    fw.log(f"lab {fw.lab['id']} firmware up: {len(fw.machines)} machines, socket {sock}")
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        fw.shutdown()
        srv.server_close()
        sock.unlink(missing_ok=True)
        try:
            (lab_dir / PIDFILE).unlink()
        except FileNotFoundError:
            pass
        fw.log("firmware stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
