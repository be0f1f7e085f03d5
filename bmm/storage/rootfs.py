"""A VM's image as a board's root filesystem: a tar stream, made on the front-end, where the
image is, and unpacked on the proxy (an NFS root) or stored there compressed (for the
two-stage boot, whose first stage unpacks it onto the board's own disk).

What an image can be:
- a `.tar`, `.tar.gz` or `.tar.xz` root filesystem (told by its magic, not its name): it is
  the stream already, decompressed here;
- a raw or qcow2 filesystem image, or a whole-disk image (its root partition, found as for
  local-disk servers by bmm.storage.image.probe_layout): mounted read-only through a loop
  device (at the partition's offset), and tarred with GNU tar `--numeric-owner --xattrs
  --acls`, so owners, modes, xattrs, ACLs and device nodes are kept (and no `--sparse`: a
  file with holes, as `mke2fs -d` leaves them, would become a GNU sparse member, which the
  two-stage boot's busybox tar unpacks as a literal `GNUSparseFile.<n>/` path). A qcow2 image is first
  converted to a sparse raw file in a private temporary directory: the kernel can only
  loop-mount raw bytes, and a board's root is small.
Mounting needs root: when bmm does not run as root, the commands run through `sudo -n`.
Every mount and loop device is released on every path.
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bmm.errors import BmmError, InputError
from bmm.runner import LocalExecutor
from bmm.storage.image import inspect_image, probe_layout

CHUNK = 1 << 20
TAR_CREATE = ["tar", "--create", "--file=-", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
              "--one-file-system", "--directory"]
TAR_EXTRACT = ["tar", "--extract", "--file=-", "--preserve-permissions", "--same-owner", "--numeric-owner",
               "--xattrs", "--xattrs-include=*", "--acls", "--directory"]

Source = Callable[[], bytes | None]


def archive_kind(path: str) -> str | None:
    """"tar", "tar.gz" or "tar.xz" for a tar archive (by its bytes), else None."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:6] == b"\xfd7zXZ\x00":
        return "tar.xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def _sudo(argv: list[str]) -> list[str]:
    return argv if os.geteuid() == 0 else ["sudo", "-n", "--", *argv]


@dataclass(frozen=True)
class RootFacts:
    """What bmm needs to know of a root before it boots it."""

    kernel: bytes | None        # its own kernel in /boot for the board's architecture
    one_context: bool           # the stock one-context package is installed


@dataclass
class RootStream:
    """A plain (uncompressed) tar stream of the root, what it weighs, and its facts."""

    source: Source
    total: int                              # the bytes it will carry, roughly (for progress)
    facts: Callable[[str], RootFacts]       # arch -> facts (read before the stream is)


@contextmanager
def root_stream(image: str, fmt: str, *, node: str | None = None) -> Iterator[RootStream]:
    """The image's root filesystem as a tar stream (see the module docstring)."""
    kind = archive_kind(image)
    if kind is not None:
        yield _archive_stream(image, kind)
        return
    info = inspect_image(image, fmt or None)
    layout = probe_layout(image, info.format, info)
    ex = LocalExecutor(node=node)
    with tempfile.TemporaryDirectory(prefix="bmm-rootfs-") as tmp:
        raw = image
        if info.format == "qcow2":
            raw = os.path.join(tmp, "root.raw")
            ex.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "64k", image, raw], timeout=3600)
        mnt = os.path.join(tmp, "root")
        os.mkdir(mnt)
        options = f"ro,loop,offset={layout.root_offset},sizelimit={layout.root_size}"
        ex.run(_sudo(["mount", "-o", options, raw, mnt]), timeout=120)
        try:
            used = _used_bytes(mnt)
            proc = subprocess.Popen(_sudo([*TAR_CREATE, mnt, "."]), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                yield RootStream(_pipe_source(proc, image), used, lambda arch: _facts_of_dir(mnt, arch))
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        finally:
            ex.run(_sudo(["umount", mnt]), timeout=120, check=False)


def _used_bytes(mnt: str) -> int:
    st = os.statvfs(mnt)
    return max(1, (st.f_blocks - st.f_bfree) * st.f_frsize)


def _pipe_source(proc: subprocess.Popen, image: str) -> Source:
    def source() -> bytes | None:
        chunk = proc.stdout.read(CHUNK)
        if chunk:
            return chunk
        if proc.wait() != 0:
            cause = (proc.stderr.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise BmmError(f"reading the root filesystem of {os.path.basename(image)} failed: {cause}")
        return None
    return source


def _archive_stream(path: str, kind: str) -> RootStream:
    opener = {"tar": open, "tar.gz": gzip.open, "tar.xz": lzma.open}[kind]
    fh = opener(path, "rb")

    def source() -> bytes | None:
        try:
            chunk = fh.read(CHUNK)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            fh.close()
            raise InputError(f"the image {os.path.basename(path)} is a damaged {kind} archive ({type(exc).__name__})") from None
        if not chunk:
            fh.close()
            return None
        return chunk

    return RootStream(source, os.path.getsize(path), lambda arch: _facts_of_tar(path, arch))


def gzip_source(source: Source, counter: list[int] | None = None) -> Source:
    """The same stream, gzip-compressed (level 1: the link or the board's CPU is the limit,
    not the ratio). counter[0] counts the plain bytes read, for progress."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    done = False

    def out() -> bytes | None:
        nonlocal done
        while not done:
            chunk = source()
            if chunk is None:
                done = True
                return comp.flush()
            if counter is not None:
                counter[0] += len(chunk)
            data = comp.compress(chunk)
            if data:
                return data
        return None
    return out


# ------------------------------------------------------------------------------ facts

KERNEL_NAMES = ("vmlinux", "vmlinuz", "Image", "zImage")
# addon-context-linux installs these (src/usr/sbin/one-contextd, src/etc/one-context.d/)
ONE_CONTEXT_PATHS = ("usr/sbin/one-contextd", "etc/one-context.d")


def _is_kernel_name(name: str) -> bool:
    return name.split("/")[-1].startswith(KERNEL_NAMES)


def _facts_of_dir(root: str, arch: str) -> RootFacts:
    kernel = None
    boot = Path(root) / "boot"
    if boot.is_dir():
        for path in sorted(boot.iterdir()):
            if _is_kernel_name(path.name) and path.is_file() and not path.is_symlink():
                data = _read_root_file(str(path))
                if arch_matches(kernel_arch(data), arch):
                    kernel = data
                    break
    one_context = any(os.path.lexists(os.path.join(root, p)) for p in ONE_CONTEXT_PATHS)
    return RootFacts(kernel, one_context)


def _read_root_file(path: str) -> bytes:
    """A file of the mounted image (kernels are often 0600 root: read as root)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except PermissionError:
        return subprocess.run(_sudo(["cat", "--", path]), capture_output=True, timeout=120, check=True).stdout


def _facts_of_tar(path: str, arch: str) -> RootFacts:
    """One pass over the archive's members."""
    kernel = None
    one_context = False
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./").rstrip("/")
                if name.startswith(ONE_CONTEXT_PATHS):
                    one_context = True
                if (kernel is None and member.isfile() and name.startswith("boot/") and name.count("/") == 1
                        and _is_kernel_name(name)):
                    fh = tar.extractfile(member)
                    data = fh.read() if fh else b""
                    if arch_matches(kernel_arch(data), arch):
                        kernel = data
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
        raise InputError(f"the image {os.path.basename(path)} is a damaged tar archive") from None
    return RootFacts(kernel, one_context)


# ELF e_machine numbers (the ELF ABI; Linux include/uapi/linux/elf-em.h)
ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 188: "tilepro", 191: "tilegx", 243: "riscv"}
ARCH_ALIASES = {"tilepro64": "tilepro", "tilepro": "tilepro", "tile64": "tilepro", "tilegx": "tilegx",
                "tilegx36": "tilegx", "tile-gx": "tilegx", "tile-gx36": "tilegx",
                "x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
                "riscv64": "riscv", "riscv": "riscv", "armv7l": "arm", "arm": "arm"}


def kernel_arch(data: bytes) -> str | None:
    """The architecture a kernel file is for: an ELF's e_machine, or the ARCH= line of a bmm
    lab kernel (bmm_lab.boardroot's text format)."""
    if data[:4] == b"\x7fELF" and len(data) >= 20:
        little = data[5] == 1
        machine = int.from_bytes(data[18:20], "little" if little else "big")
        return ELF_MACHINES.get(machine)
    if data.startswith(b"#") or b"BMM_LAB_KERNEL=1" in data[:4096]:
        for line in data[:4096].decode("utf-8", errors="replace").splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key == "ARCH":
                return ARCH_ALIASES.get(value.strip().lower())
    return None


def arch_matches(kernel: str | None, node_arch: str) -> bool:
    return kernel is not None and kernel == ARCH_ALIASES.get(node_arch.strip().lower())
