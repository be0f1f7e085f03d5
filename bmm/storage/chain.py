"""qcow2 images with a backing chain inside their own datastore, read without staging.

image.inspect_image refuses backing files, for a good reason: qemu opens whatever path an
image's header names, so a crafted qcow2 whose backing file is another VM's disk (or a device
of the front-end) would hand that to a node. This module makes a chain safe to read:
- each layer is inspected alone (`qemu-img info` without --backing-chain never opens the
  backing file) and must be raw or qcow2, unencrypted, without an external data file, and name
  its backing file's format (no probing);
- each backing file, resolved the way qemu resolves it (relative to its overlay's directory,
  symlinks followed), must be a regular file inside `within` (the datastore's directory);
  protocol names (`nbd://`, `json:`...) are not files there and are refused; loops and chains
  deeper than MAX_DEPTH are refused;
- qemu is then given the whole chain explicitly, as a `json:` spec naming each validated file
  and format with `"backing": null` at the bottom, so it never re-reads a path from a header.
  image.open_image(spec, "qcow2", size=...) reads it: `qemu-img map` for the allocation
  (all layers) and a read-only qemu-nbd for the bytes, as for any qcow2.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

from bmm.errors import BmmError, FatalError
from bmm.runner import run
from bmm.storage.image import FORMATS, ImageInfo, inspect_image

MAX_DEPTH = 16


@dataclass(frozen=True)
class Layer:
    path: str        # resolved (realpath)
    format: str      # raw | qcow2


@dataclass(frozen=True)
class Source:
    """What to read for an image: `info` (virtual size of the top), and `spec`, the pinned
    json: filename of its backing chain (None for an image without backing file)."""
    info: ImageInfo
    layers: tuple[Layer, ...]
    spec: str | None = None


def _layer_info(path: str, fmt: str, timeout: float) -> dict:
    try:
        res = run(["qemu-img", "info", "--output=json", "-f", fmt, path], timeout=timeout)
    except FatalError:
        raise
    except BmmError as exc:
        raise BmmError(f"image {path}: qemu-img cannot read it: {exc.reason}") from None
    info = json.loads(res.stdout)
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise BmmError(f"image {path}: qcow2 with an external data file is not supported")
    if info.get("encrypted") or specific.get("encrypt"):
        raise BmmError(f"image {path}: encrypted images are not supported")
    return info


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _spec(layers: tuple[Layer, ...]) -> str:
    node: dict | None = None
    for layer in reversed(layers):
        this = {"driver": layer.format, "file": {"driver": "file", "filename": layer.path}}
        if layer.format == "qcow2":
            this["backing"] = node          # None at the bottom: no backing, whatever the header says
        node = this
    return "json:" + json.dumps(node, separators=(",", ":"))


def inspect_source(path: str, fmt: str | None = None, *, within: str, timeout: float = 60) -> Source:
    """Inspect an image and, for a qcow2 with backing files, its whole chain, which must lie
    inside `within`. An image without backing file gets image.inspect_image's answer as is."""
    probe = {} if fmt == "raw" else _probe_format(path, fmt, timeout)
    if probe.get("format") != "qcow2" or not probe.get("backing-filename"):
        info = inspect_image(path, fmt, timeout=timeout)
        return Source(info, (Layer(os.path.realpath(path), info.format),))
    root = os.path.realpath(within)
    layers: list[Layer] = []
    current, current_fmt, info = os.path.realpath(path), "qcow2", probe
    if not _inside(current, root):
        raise BmmError(f"image {path}: is not inside {within}")
    while True:
        layers.append(Layer(current, current_fmt))
        backing = info.get("backing-filename")
        if not backing:
            break
        if len(layers) >= MAX_DEPTH:
            raise BmmError(f"image {path}: backing chain deeper than {MAX_DEPTH}")
        backing_fmt = info.get("backing-filename-format")
        if backing_fmt not in FORMATS:
            raise BmmError(f"image {path}: backing file {backing} of {current} "
                           f"{'has no declared format' if not backing_fmt else 'is ' + repr(backing_fmt)} "
                           f"(bmm reads {' and '.join(FORMATS)} layers named with -F)")
        nxt = os.path.realpath(os.path.join(os.path.dirname(current), backing))
        try:
            regular = stat.S_ISREG(os.stat(nxt).st_mode)
        except OSError:
            regular = False
        if not regular or not _inside(nxt, root):
            raise BmmError(f"image {path}: backing file {backing} of {current} is not a file inside {within}")
        if any(layer.path == nxt for layer in layers):
            raise BmmError(f"image {path}: its backing chain loops at {backing}")
        current, current_fmt = nxt, backing_fmt
        info = _layer_info(current, current_fmt, timeout)
    virtual = int(probe.get("virtual-size") or 0)
    if virtual <= 0:
        raise BmmError(f"image {path}: empty image (virtual size 0)")
    actual = sum(os.path.getsize(layer.path) for layer in layers)
    layers_t = tuple(layers)
    return Source(ImageInfo(path, "qcow2", virtual, actual), layers_t, _spec(layers_t))


def _probe_format(path: str, fmt: str | None, timeout: float) -> dict:
    """qemu-img info of the top image alone (the declared format, else qemu's probe)."""
    if fmt is not None and fmt not in FORMATS:
        return {}          # inspect_image says why
    if not os.path.isfile(path):
        return {}
    argv = ["qemu-img", "info", "--output=json"] + (["-f", fmt] if fmt else []) + [path]
    res = run(argv, timeout=timeout, check=False)
    if not res.ok:
        return {}          # inspect_image says why
    info = json.loads(res.stdout)
    if info.get("format") == "qcow2":
        _layer_info(path, "qcow2", timeout)      # data file / encryption: refused
    return info
