#!/usr/bin/env bash
# Prepare this host to run Overnight: the Python package, a running Docker engine and the sandbox
# base image. Idempotent: what is already there is left alone. Debian/Ubuntu hosts; installing the
# engine needs root. Usage: bash infra/setup-host.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
echo "== python package overnight${extra}"
python3 -m pip install --quiet --disable-pip-version-check -e ".${extra}"

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "need root to install: $*" >&2
        exit 1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

echo "== web app assets"
# The web app serves its browser libraries itself (diff2html, highlight.js; pinned by web/assets/package-lock.json).
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
bash web/assets/install.sh
if [ -n "$extra" ]; then
    # tests/web drive Debian's Chromium through Playwright (which cannot download its own browser here).
    command -v chromium >/dev/null 2>&1 || apt_install chromium
fi

echo "== docker engine"
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    if [ "$(id -u)" = 0 ]; then
        nohup dockerd >/var/log/overnight-dockerd.log 2>&1 &
    else
        echo "the Docker engine is not running; start it (sudo systemctl start docker)" >&2
        exit 1
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/overnight-dockerd.log" >&2; exit 1; }
fi
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}'

echo "== sandbox image"
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap
command -v tmux >/dev/null 2>&1 || apt_install tmux
# The sandboxes' seccomp filter is compiled with libseccomp (pyseccomp loads it through ctypes).
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || apt_install libseccomp2
command -v setpriv >/dev/null 2>&1 || apt_install util-linux

echo "== set-up network"
# bubblewrap's set-up sandboxes get their network from a slirp4netns relay; both backends' set-up traffic
# passes iptables rules the worker installs (OUTPUT for the relays' group, DOCKER-USER/INPUT for Docker's bridge).
command -v slirp4netns >/dev/null 2>&1 || apt_install slirp4netns
command -v iptables >/dev/null 2>&1 || apt_install iptables
if [ "$(id -u)" = 0 ] && ! getent group overnight-egress >/dev/null; then
    groupadd --system overnight-egress
fi

echo "== egress proxy"
# Sandboxes whose network policy is an allowlist or full reach out only through squid, which each worker process
# starts on its own when a sandbox first needs it (sandbox/proxy.py); the package's system service is not used.
if ! command -v squid >/dev/null 2>&1; then
    RUNLEVEL=1 apt_install squid
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now squid >/dev/null 2>&1 || true
    fi
fi

echo "== workspace disks"
# Each workspace and set-up environment is a loop-mounted ext4 filesystem as large as the disk limit
# (sandbox/disk.py, docs/sandbox.md "Disk"); a worker that cannot make one refuses to start.
command -v mkfs.ext4 >/dev/null 2>&1 || apt_install e2fsprogs
python3 - <<'PY'
import tempfile
from pathlib import Path
from sandbox.disk import probe_kernel_disks
with tempfile.TemporaryDirectory(prefix="overnight-disk-probe-") as folder:
    reason = probe_kernel_disks(Path(folder))
print(f"kernel disk limits: {reason} (workers need OVERNIGHT_SANDBOX_DISK_ENFORCEMENT=poll)" if reason else "kernel disk limits: ok")
PY
overnight image build
