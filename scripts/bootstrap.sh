#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system packages (apt) and the project's virtual environment (.venv).
# Both README commands call this first; running it again on a ready machine takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3.11-minimal and libpython3.11-stdlib: Debian's interpreter, copied into the lab's deploy ramdisk (lab/ramdisk.py)
# redis-server: the lab NetBox's caches and task queue (lab/netbox_server.py)
SYSTEM_PACKAGES=(redis-server ipmitool openssh-server openssh-client dnsmasq qemu-system-x86 ipxe-qemu chromium iproute2 procps e2fsprogs python3.11-minimal libpython3.11-stdlib lldpd iputils-ping nftables prometheus)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing system packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's prometheus package starts its own server (0.0.0.0:9090) where systemd runs: the tests start
    # their own on 127.0.0.1 (tests/api/test_metrics_prometheus.py), so the packaged one is stopped.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

# Redis for the lab NetBox: the machine's own at 127.0.0.1:6379, else one started here (nothing on disk).
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    echo "bootstrap: starting redis-server on 127.0.0.1:6379"
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.neocloud-installed
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
# Every package, build tools and pip included, comes from requirements/lock.txt, pinned and checked against
# its sha256 (scripts/lock.sh writes it), as wheels only (an sdist would be built with tools nobody checked);
# then the project itself, built with the setuptools just installed from the lock.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/lock.txt -nt "$stamp" ]; then
    echo "bootstrap: installing Python dependencies into .venv (requirements/lock.txt)"
    mkdir -p var
    if ! {
        .venv/bin/python -m pip install -q --require-hashes --no-deps --only-binary :all: -r requirements/lock.txt &&
            .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . &&
            .venv/bin/python -m pip check
    } > var/bootstrap.log 2>&1; then
        cat var/bootstrap.log >&2
        echo "bootstrap: installing Python dependencies failed (log above, also in var/bootstrap.log)" >&2
        exit 1
    fi
    touch "$stamp"
fi

# The lab's emulated computers (lab/ramdisk.py, osimage.py): Debian's kernel, busybox and boot
# tools are downloaded here, once (var/ramdisk/debs), so that tests and the demo never reach the network.
if ! { .venv/bin/python -m lab.ramdisk && .venv/bin/python -m lab.osimage; } > var/lab-images.log 2>&1; then
    cat var/lab-images.log >&2
    echo "bootstrap: building the lab's deploy ramdisk and OS image failed (log above, also in var/lab-images.log)" >&2
    exit 1
fi
