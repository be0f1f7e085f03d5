"""A hardened XML parser for driver input.

Driver input comes from oned, but a remote run by hand can be fed anything: no DTD, no
entities, no network, and a size and depth bound, so an entity bomb or an external entity is
refused before it costs anything.

It is the standard library's expat feeding an ElementTree builder, every DTD and entity hook
refusing (as defusedxml does). Not lxml: loading and unloading lxml cost every `poll` some
20 ms of its 150 ms budget (benchmarks/cold_start.py), and driver input needs no more than
ElementTree's find/findtext. Comments and processing instructions are dropped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from bmm.errors import InputError

MAX_XML_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 256             # libxml2's own bound without huge_tree

__all__ = ["MAX_XML_BYTES", "InputError", "parse_xml"]


class _Refused(Exception):
    def __init__(self, why: str):
        self.why = why


def _refuse(*_args) -> None:
    raise _Refused("has a DOCTYPE or entity declaration, which is refused")


def parse_xml(data: bytes | str, *, what: str = "driver input") -> ET.Element:
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_XML_BYTES:
        raise InputError(f"{what} is {len(data)} bytes, more than the {MAX_XML_BYTES} allowed")
    if not data.strip():
        raise InputError(f"{what} is empty")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise InputError(f"{what} has a DOCTYPE or entity declaration, which is refused")
    builder = ET.TreeBuilder()
    depth = 0

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"nests elements deeper than {MAX_DEPTH}")
        builder.start(tag, attrs)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    # a declaration the byte check above cannot see (another encoding) still takes no effect
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise InputError(f"{what} {exc.why}") from None
    except expat.ExpatError as exc:
        # say where, not what: the input is never quoted
        raise InputError(f"{what} is not valid XML (line {exc.lineno}, column {exc.offset + 1})") from None
    root = builder.close()
    if root is None:
        raise InputError(f"{what} is not valid XML")
    return root
