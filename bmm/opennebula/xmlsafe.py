"""A hardened XML parser for driver input.

Driver input comes from oned, but a remote run by hand can be fed anything: no DTD, no
entities, no network, and a size bound, so an entity bomb or an external entity is refused
before it costs anything.
"""

from __future__ import annotations

from lxml import etree

from bmm.errors import InputError

MAX_XML_BYTES = 16 * 1024 * 1024

__all__ = ["MAX_XML_BYTES", "InputError", "parse_xml"]


def parse_xml(data: bytes | str, *, what: str = "driver input") -> etree._Element:
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_XML_BYTES:
        raise InputError(f"{what} is {len(data)} bytes, more than the {MAX_XML_BYTES} allowed")
    if not data.strip():
        raise InputError(f"{what} is empty")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise InputError(f"{what} has a DOCTYPE or entity declaration, which is refused")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        # lxml's message quotes the document (tag names, text): say where, not what
        line, column = exc.position if exc.position else (0, 0)
        raise InputError(f"{what} is not valid XML (line {line}, column {column})") from None
    if root is None:
        raise InputError(f"{what} is not valid XML")
    return root
