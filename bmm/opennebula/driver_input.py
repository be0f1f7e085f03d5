"""Read what OpenNebula hands a driver: raw XML or base64 of it, from stdin or a file.

Local actions (every bmm action) get base64 on stdin (protocol §1.5); a person debugging a
remote by hand pipes a plain XML file. Both are accepted.
"""

from __future__ import annotations

import base64
import binascii
import re

from bmm.opennebula.xmlsafe import MAX_XML_BYTES, InputError

_B64 = re.compile(rb"^[A-Za-z0-9+/=\s]+$")


def decode_payload(raw: bytes, *, what: str = "stdin") -> bytes:
    """Return XML bytes from raw XML or base64-encoded XML."""
    if len(raw) > MAX_XML_BYTES * 2:
        raise InputError(f"{what} is larger than {MAX_XML_BYTES * 2} bytes")
    stripped = raw.strip()
    if not stripped:
        raise InputError(f"{what} is empty: expected the driver action XML (raw or base64)")
    if stripped.startswith(b"<"):
        return stripped
    if not _B64.match(stripped):
        raise InputError(f"{what} is neither XML nor base64")
    try:
        decoded = base64.b64decode(b"".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is neither XML nor valid base64") from None
    decoded = decoded.strip()
    if not decoded.startswith(b"<"):
        raise InputError(f"{what} decodes from base64, but not to XML")
    return decoded


def read_stream(stream, *, what: str = "stdin") -> bytes:
    data = stream.read(MAX_XML_BYTES * 2 + 1)
    return decode_payload(data, what=what)


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return read_stream(fh, what=f"deployment file {path}")
    except FileNotFoundError:
        raise InputError(f"deployment file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"deployment file {path} is a directory") from None
