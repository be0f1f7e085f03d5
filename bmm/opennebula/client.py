"""Talking to oned as an operator's tools do: pyone over XML-RPC.

Where oned is and who we are, the way OpenNebula's own CLI finds them:
- endpoint: `--one URL`, else $ONE_XMLRPC, else http://localhost:2633/RPC2;
- credentials: $ONE_AUTH names a file holding `user:password`, else ~/.one/one_auth, else
  /var/lib/one/.one/one_auth (oneadmin's, when bmm runs as root on the front-end).
The password is read from that file and handed to pyone; it is never printed, logged or put
in an error.
"""

from __future__ import annotations

import os
import socket
import xmlrpc.client
from pathlib import Path

from bmm.errors import AuthError, ConfigError, TransientError

DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"
TIMEOUT_S = 30.0


def endpoint(explicit: str | None = None) -> str:
    return explicit or os.environ.get("ONE_XMLRPC") or DEFAULT_ENDPOINT


def auth_file() -> Path | None:
    candidates = [os.environ.get("ONE_AUTH"), Path.home() / ".one" / "one_auth", "/var/lib/one/.one/one_auth"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def session(explicit_file: str | None = None) -> str:
    path = Path(explicit_file) if explicit_file else auth_file()
    if path is None:
        raise ConfigError("no OpenNebula credentials: set ONE_AUTH to a file holding user:password, "
                          "or create ~/.one/one_auth")
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the OpenNebula credentials in {path} ({exc.strerror})") from None
    if ":" not in text:
        raise ConfigError(f"{path} does not hold user:password")
    return text


def connect(url: str | None = None, *, auth: str | None = None):
    """A pyone.OneServer for oned at url (see the module docstring), checked with one call."""
    import pyone

    where = endpoint(url)
    one = pyone.OneServer(where, session=session(auth), timeout=TIMEOUT_S)
    try:
        one.system.version()
    except pyone.OneAuthenticationException:
        raise AuthError(f"oned at {where} refused the credentials") from None
    except (OSError, socket.timeout, xmlrpc.client.ProtocolError) as exc:
        raise TransientError(f"oned at {where} does not answer ({type(exc).__name__})") from None
    return one
