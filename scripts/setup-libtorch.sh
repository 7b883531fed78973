#!/usr/bin/env bash
# Installs libtorch 2.1.2 (CPU use) from the PyPI torch==2.1.2 wheel into a
# versioned folder. Idempotent: a marker file makes the second run instant.
set -euo pipefail

TORCH_VERSION=2.1.2
PREFIX=${REFINERS_TORCH_PREFIX:-/opt/refiners-go/torch-${TORCH_VERSION}}
MARKER="$PREFIX/.ok"

if [[ -f "$MARKER" ]]; then
  exit 0
fi

echo "setup-libtorch: installing libtorch ${TORCH_VERSION} into ${PREFIX}" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Only the wheel itself: the CUDA runtime wheels it depends on are not needed
# for CPU inference, and we never import the Python package.
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp \
  --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp" "torch==${TORCH_VERSION}"

# libtorch_cpu.so in the cu121 wheel NEEDs libcudart.so.12 and libcupti.so.12
# (the profiler links them even on CPU) and finds them through its RPATH
# $ORIGIN/../../nvidia/*/lib. These two wheels are the versions torch pins.
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp \
  --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp" "nvidia-cuda-runtime-cu12==12.1.105" "nvidia-cuda-cupti-cu12==12.1.105"

rm -rf "$PREFIX.tmp"
mkdir -p "$PREFIX.tmp"
unzip -q "$tmp"/torch-${TORCH_VERSION}-*.whl 'torch/lib/*' 'torch/include/*' -d "$PREFIX.tmp"
for w in "$tmp"/nvidia_cuda_runtime_cu12-*.whl "$tmp"/nvidia_cuda_cupti_cu12-*.whl; do
  unzip -q -o "$w" 'nvidia/*' -d "$PREFIX.tmp"
done

# CUDA libraries stay unless asked to drop them: the `cuda` build tag links
# against them (link-checked only on machines without a GPU).
if [[ "${REFINERS_TORCH_CPU_ONLY:-0}" == 1 ]]; then
  rm -f "$PREFIX.tmp"/torch/lib/libtorch_cuda*.so "$PREFIX.tmp"/torch/lib/libc10_cuda.so "$PREFIX.tmp"/torch/lib/libcaffe2_nvrtc.so
fi

missing=$(ldd "$PREFIX.tmp/torch/lib/libtorch_cpu.so" | grep 'not found' || true)
if [[ -n "$missing" ]]; then
  echo "setup-libtorch: libtorch_cpu.so has unresolved dependencies:" >&2
  echo "$missing" >&2
  exit 1
fi

rm -rf "$PREFIX"
mv "$PREFIX.tmp" "$PREFIX"
touch "$MARKER"
echo "setup-libtorch: done" >&2
