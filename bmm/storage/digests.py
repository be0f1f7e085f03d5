"""The SHA-256 digests of image streams, remembered on the front-end so a copy of an image
that was already sent once costs no hashing there (the node always hashes what it receives).

Hashing is half of the front-end's CPU per copy (docs/storage.md), and an image is deployed
many times, often to several nodes at once. A digest is stored only after a receiver computed
the same one, under a key naming every input of the stream: each file qemu reads (the image,
or every layer of its backing chain) by realpath, device, inode, size, mtime and ctime (no
write to a file leaves its ctime unchanged), and every parameter of the stream (range, target
size, zero policy, chunking, version). A stale entry can only make the node refuse the copy
("checksum mismatch"): then it is dropped, and the next try hashes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

MAX_ENTRIES = 1024


def source_files(image_path: str, source: str | None) -> list[str]:
    """The files a stream is read from: the image, or each `filename` of a json: chain spec."""
    if not source:
        return [image_path]
    files = []
    node = json.loads(source[len("json:"):])
    while node:
        files.append(node["file"]["filename"])
        node = node.get("backing")
    return files


class DigestCache:
    """One file per stream key in `directory` (created 0700), written atomically."""

    def __init__(self, directory: str):
        self.dir = directory

    def key(self, files: list[str], params: dict) -> str | None:
        """The stream's key, or None when a file cannot be examined (then nothing is cached)."""
        ident = []
        for path in files:
            try:
                real = os.path.realpath(path)
                st = os.stat(real)
            except OSError:
                return None
            ident.append([real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
        text = json.dumps({"files": ident, "params": params}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key + ".sha256")

    def get(self, key: str | None) -> str | None:
        if key is None:
            return None
        try:
            with open(self._path(key)) as f:
                digest = f.read().strip()
        except OSError:
            return None
        return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None

    def put(self, key: str | None, digest: str) -> None:
        if key is None:
            return
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
            with os.fdopen(fd, "w") as f:
                f.write(digest + "\n")
            os.replace(tmp, self._path(key))
            self._prune()
        except OSError:
            pass        # a cache: a copy never fails for it

    def _prune(self) -> None:
        """Keep the MAX_ENTRIES newest entries (those of images gone or changed never match)."""
        entries = [e for e in os.scandir(self.dir) if e.name.endswith(".sha256")]
        if len(entries) > MAX_ENTRIES:
            entries.sort(key=lambda e: e.stat().st_mtime_ns)
            for e in entries[:len(entries) - MAX_ENTRIES]:
                os.unlink(e.path)

    def drop(self, key: str | None) -> None:
        if key is not None:
            try:
                os.unlink(self._path(key))
            except OSError:
                pass
