#!/usr/bin/env bash
# Creates the Python reference environment for the conformance vectors:
# a venv at conformance/.venv with the exact pins of conformance/requirements.txt
# (torch 2.1.2, refiners 0.4.0, safetensors, numpy 1.x and their dependencies).
#
# Idempotent: a marker inside the venv records the requirement set it was built
# from; when it matches requirements.txt (and the interpreter still works) the
# script exits at once. Change requirements.txt and the next run reinstalls.
#
# Usage: conformance/setup-python.sh   (env PYTHON=/path/to/python3.11 to pick
#        the interpreter; FORCE=1 to rebuild the venv from scratch)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
VENV="$SCRIPT_DIR/.venv"
REQS="$SCRIPT_DIR/requirements.txt"
MARKER="$VENV/.requirements.installed"
PY="$VENV/bin/python"

log() { printf 'setup-python: %s\n' "$*" >&2; }

[[ -f "$REQS" ]] || { log "missing $REQS"; exit 1; }

# The marker holds the python minor version plus a verbatim copy of the
# requirement set, so any edit to requirements.txt invalidates it.
want_marker() {
	printf 'python=%s\n' "$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
	cat "$REQS"
}

if [[ "${FORCE:-0}" != 1 && -x "$PY" && -f "$MARKER" ]] &&
	cmp -s "$MARKER" <(want_marker "$PY") &&
	"$PY" -c 'import torch, refiners, safetensors' >/dev/null 2>&1; then
	log "up to date ($VENV)"
	exit 0
fi

# Pick an interpreter: $PYTHON, else python3.11, else python3 (must be 3.11,
# torch 2.1.2 has wheels for 3.8-3.11 only).
if [[ -n "${PYTHON:-}" ]]; then
	BASE_PY="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
	BASE_PY="$(command -v python3.11)"
else
	BASE_PY="$(command -v python3 || true)"
fi
[[ -n "$BASE_PY" ]] || { log "no python3 found; set PYTHON"; exit 1; }
ver="$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$ver" in
	3.8 | 3.9 | 3.10 | 3.11) ;;
	*) log "python $ver from $BASE_PY: torch 2.1.2 needs 3.8-3.11 (3.11 preferred); set PYTHON"; exit 1 ;;
esac

if [[ "${FORCE:-0}" == 1 || ! -x "$PY" ]] || [[ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)" != "$ver" ]]; then
	log "creating venv at $VENV with $BASE_PY ($ver)"
	rm -rf "$VENV"
	"$BASE_PY" -m venv "$VENV"
fi

rm -f "$MARKER"
log "installing pinned requirements from $REQS"
"$PY" -m pip install --disable-pip-version-check --no-input -q -r "$REQS"

"$PY" -c 'import torch, refiners, safetensors; print("setup-python: torch", torch.__version__, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)' >&2
want_marker "$PY" >"$MARKER"
log "done ($VENV)"
