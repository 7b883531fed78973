#!/bin/sh
# Installs the browser the browser tests drive (cmd/refinersd/browser_test.go):
# Debian's `chromium` package. Idempotent: does nothing when a Chromium is
# already there ($REFINERS_CHROMIUM, or chromium / chromium-browser /
# google-chrome on $PATH).
set -eu
if [ -n "${REFINERS_CHROMIUM:-}" ]; then
	command -v "$REFINERS_CHROMIUM" >/dev/null 2>&1 && exit 0
	echo "setup-browser: REFINERS_CHROMIUM=$REFINERS_CHROMIUM is not an executable" >&2
	exit 1
fi
for b in chromium chromium-browser google-chrome google-chrome-stable; do
	command -v "$b" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
	echo "setup-browser: no Chromium found and no apt-get to install it; install Chromium and put it on PATH (or set REFINERS_CHROMIUM)" >&2
	exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "setup-browser: installing Chromium needs root: run 'apt-get install -y chromium' as root" >&2
		exit 1
	fi
	sudo="sudo"
fi
echo "setup-browser: installing Debian's chromium (apt-get)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "setup-browser: apt-get ran but chromium is still not on PATH" >&2; exit 1; }
