#!/usr/bin/env bash
# Builds refinersd with the `cuda` tag and checks, with readelf, that the
# binary really depends on libtorch_cuda (Debian's gcc links --as-needed by
# default, which would silently drop it). No GPU is needed: this only links.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -tags cuda -o "$out/refinersd-cuda" ./cmd/refinersd
needed=$(readelf -d "$out/refinersd-cuda" | grep NEEDED)
echo "$needed"
for lib in libtorch_cuda.so libc10_cuda.so libtorch_cpu.so libc10.so; do
  if ! grep -q "\[$lib\]" <<<"$needed"; then
    echo "check-cuda-link: FAIL: $lib is not NEEDED by the cuda build" >&2
    exit 1
  fi
done
# The CPU build must not depend on CUDA at all.
go build -o "$out/refinersd-cpu" ./cmd/refinersd
if readelf -d "$out/refinersd-cpu" | grep -q 'cuda'; then
  echo "check-cuda-link: FAIL: the CPU build depends on a CUDA library" >&2
  exit 1
fi
echo "check-cuda-link: PASS"
