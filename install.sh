#!/bin/bash
# Install bmm on a Debian 12 / Ubuntu 22.04+ OpenNebula front-end (or a lab machine), as root.
# Idempotent: a second run with the same options changes nothing.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: ./install.sh [options]

Installs the system packages bmm needs, a virtualenv in /opt/bmm holding bmm, and puts `bmm`
on PATH (/usr/local/bin/bmm). With OpenNebula present (or --remotes DIR) it also installs the
driver scripts into OpenNebula's remotes directory.

Options:
  --dev               also install what the test suite needs (pytest), and install bmm
                      editable from this checkout
  --no-lab            leave out the simulated lab (`bmm lab`, the bmm-lab package from lab/)
                      and the system packages only it needs (ipmi_sim, sshd, tftpd,
                      nfs-ganesha, ...); for a production front-end
  --prefix DIR        virtualenv location (default /opt/bmm)
  --remotes DIR       install vmm/bmm, tm/bmm, im/bmm.d and etc/bmm into DIR
                      (default: /var/lib/one/remotes when it exists)
  --print-config      print the oned.conf / monitord.conf blocks and example commands, then exit
  --apply-config      insert those blocks into --oned FILE and --monitord FILE once (backups kept)
  --oned FILE         default /etc/one/oned.conf
  --monitord FILE     default /etc/one/monitord.conf
  -h, --help          this text
USAGE
}

PREFIX=/opt/bmm
DEV=0
LAB=1
REMOTES=""
PRINT_CONFIG=0
APPLY_CONFIG=0
ONED=/etc/one/oned.conf
MONITORD=/etc/one/monitord.conf
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

while [ $# -gt 0 ]; do
    case "$1" in
        --dev) DEV=1 ;;
        --no-lab) LAB=0 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --remotes) REMOTES="${2:?--remotes needs a directory}"; shift ;;
        --print-config) PRINT_CONFIG=1 ;;
        --apply-config) APPLY_CONFIG=1 ;;
        --oned) ONED="${2:?--oned needs a file}"; shift ;;
        --monitord) MONITORD="${2:?--monitord needs a file}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "install.sh: $*"; }

if [ "$PRINT_CONFIG" = 1 ] && [ -x "$PREFIX/bin/bmm" ]; then
    exec "$PREFIX/bin/bmm" remotes print-config
fi

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it installs system packages and /opt/bmm)" >&2
    exit 1
fi

# --- system packages -------------------------------------------------------------------------
RUNTIME_PKGS=(python3 python3-venv python3-pip ipmitool openssh-client telnet qemu-utils xorriso
              lvm2 grub-common e2fsprogs util-linux fdisk iproute2 procps tftp-hpa)
LAB_PKGS=(openipmi openssh-server grub2-common grub-pc-bin tftpd-hpa busybox-static cpio
          nfs-ganesha nfs-ganesha-vfs libnfs-utils rpcbind dosfstools)
DEV_PKGS=(expect)
PKGS=("${RUNTIME_PKGS[@]}")
[ "$LAB" = 1 ] && PKGS+=("${LAB_PKGS[@]}")
[ "$DEV" = 1 ] && PKGS+=("${DEV_PKGS[@]}")

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # policy-rc.d keeps services we only need as binaries (tftpd, ganesha, sshd) from starting
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "system packages: all present"
fi

PY=/usr/bin/python3
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "install.sh: bmm needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1)" >&2
    exit 1
fi

# --- virtualenv ------------------------------------------------------------------------------
if [ ! -x "$PREFIX/bin/python" ]; then
    say "creating virtualenv $PREFIX"
    "$PY" -m venv "$PREFIX"
fi

# Reinstall only when the source (or the install mode) changed.
stamp="$PREFIX/.bmm-installed"
want="$(cd "$SRC" && { echo "dev=$DEV lab=$LAB src=$SRC"; find pyproject.toml lab/pyproject.toml lab/bmm_lab bmm vmm_drivers im_drivers -type f \
        -name '*.py' -o -name '*.toml' -o -name 'pyproject.toml' | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing bmm into $PREFIX"
    log="$(mktemp /tmp/bmm-install.XXXXXX.log)"
    # the lab (lab/, package bmm_lab) is a project of its own: the product never imports it
    if [ "$DEV" = 1 ]; then
        spec="-e $SRC[test]"
        [ "$LAB" = 1 ] && spec="$spec -e $SRC/lab"
    else
        spec="$SRC"
        [ "$LAB" = 1 ] && spec="$spec $SRC/lab"
    fi
    # shellcheck disable=SC2086
    if ! "$PREFIX/bin/python" -m pip install --disable-pip-version-check $spec >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "install.sh: pip could not install bmm (full log: $log)" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" > "$stamp"
else
    say "bmm in $PREFIX is up to date"
fi

if [ "$(readlink /usr/local/bin/bmm 2>/dev/null)" != "$PREFIX/bin/bmm" ]; then
    ln -sfn "$PREFIX/bin/bmm" /usr/local/bin/bmm
    say "linked /usr/local/bin/bmm"
fi

# State (node database, locks, power pacing) lives in /var/lib/one/bmm, shared by the remotes
# (run as oneadmin) and the bmm command.
if [ ! -d /var/lib/one/bmm ]; then
    mkdir -p /var/lib/one/bmm
    chmod 0750 /var/lib/one/bmm
    say "created /var/lib/one/bmm"
fi
if id oneadmin >/dev/null 2>&1 && [ "$(stat -c %U /var/lib/one/bmm)" != oneadmin ]; then
    chown oneadmin: /var/lib/one/bmm
fi

# --- OpenNebula --------------------------------------------------------------------------------
if [ -z "$REMOTES" ] && [ -d /var/lib/one/remotes ]; then
    REMOTES=/var/lib/one/remotes
fi
if [ -n "$REMOTES" ]; then
    "$PREFIX/bin/bmm" remotes install "$REMOTES" --python "$PREFIX/bin/python" --source "$SRC/remotes"
fi
if [ "$PRINT_CONFIG" = 1 ]; then
    "$PREFIX/bin/bmm" remotes print-config
fi
if [ "$APPLY_CONFIG" = 1 ]; then
    "$PREFIX/bin/bmm" remotes apply-config --oned "$ONED" --monitord "$MONITORD"
fi
if [ "$LAB" = 1 ]; then
    say "done. Try: bmm lab demo"
else
    say "done. Check this front-end with: bmm doctor"
fi
