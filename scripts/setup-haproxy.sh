#!/usr/bin/env bash
# Installs HAProxy from the distribution's packages (Debian/Ubuntu), once:
# `make scaleout` runs it in front of the replicas. Idempotent: does
# nothing when haproxy is already on PATH. Needs root (or sudo).
set -euo pipefail
if command -v haproxy >/dev/null 2>&1; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "setup-haproxy: haproxy is not installed and this is not a Debian-like system: install HAProxy 2.x yourself" >&2
	exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
	sudo=sudo
fi
echo "setup-haproxy: installing haproxy (apt-get)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends haproxy >/dev/null
haproxy -v | head -1 >&2
