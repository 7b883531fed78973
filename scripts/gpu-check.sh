#!/usr/bin/env bash
# The GPU check, ready to run unchanged on a machine with an NVIDIA GPU:
#   1. checks the driver (nvidia-smi, libcuda.so.1) and libtorch's CUDA
#      libraries (libtorch_cuda.so's dependencies: the nvidia-* wheels that
#      conformance/setup-python.sh installs in conformance/.venv);
#   2. builds refinersd and refiners-bench with -tags cuda and checks that
#      they link libtorch_cuda (scripts/check-cuda-link.sh);
#   3. has the reference (Refiners 0.4.0 on the same GPU) write conformance
#      vectors in float32 and float16 (conformance/generate_half.py --device
#      cuda: the tiny U-Net, VAE decoder and CLIP text encoder, each with its
#      float64 twin), and runs the Go conformance runner on them with
#      CONFORMANCE_DEVICE=cuda (same ratio rule: error ≤ 10 × the reference's
#      own error in that dtype on that GPU);
#   4. runs `refiners-bench -mode vs-refiners -device cuda` (float32, float16);
#   5. prints one table.
#
# Exit status: 0 all passed; 1 a build, conformance or benchmark failure;
# 3 no NVIDIA GPU or driver; 4 the GPU is there but CUDA libraries are
# missing. Each refusal says what is missing.
#
# Environment: GPU_CHECK_REPEATS (default 3), GPU_CHECK_MODELS (default
# unet,vae,clip), GPU_CHECK_DEVICE (default cuda), SD15_DIR (the benchmark's
# weights, written once if missing; default $TMPDIR/refiners-sd15-random).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

NO_GPU=3
NO_CUDA_LIBS=4
device=${GPU_CHECK_DEVICE:-cuda}
repeats=${GPU_CHECK_REPEATS:-3}
models=${GPU_CHECK_MODELS:-unet,vae,clip}
weights=${SD15_DIR:-${TMPDIR:-/tmp}/refiners-sd15-random}
py=conformance/.venv/bin/python

say() { printf 'gpu-check: %s\n' "$*" >&2; }

# --- 1. the GPU, its driver, the CUDA libraries -------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  say "no NVIDIA driver: nvidia-smi is not on PATH (install the NVIDIA driver; a machine without an NVIDIA GPU cannot run this check)"
  exit $NO_GPU
fi
gpus=$(nvidia-smi -L 2>&1)
if [[ $? -ne 0 ]] || ! grep -q '^GPU ' <<<"$gpus"; then
  say "nvidia-smi lists no GPU:"
  printf '%s\n' "$gpus" >&2
  exit $NO_GPU
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
  say "the driver library libcuda.so.1 is not in the linker cache (ldconfig -p): install the NVIDIA driver's user-space libraries"
  exit $NO_GPU
fi
say "GPU: $(head -1 <<<"$gpus")"

scripts/setup.sh || { say "scripts/setup.sh failed"; exit 1; }
conformance/setup-python.sh || { say "conformance/setup-python.sh failed"; exit 1; }
torch_lib=$(sed -n 's|.*-L\([^ ]*/torch/lib\).*|\1|p' /opt/refiners-go/gotch-v0.9.1-p1/libtch/lib.go | head -1)
if [[ ! -f "$torch_lib/libtorch_cuda.so" ]]; then
  say "$torch_lib/libtorch_cuda.so is missing (libtorch was installed with REFINERS_TORCH_CPU_ONLY=1?): remove $(dirname "$(dirname "$torch_lib")") and rerun scripts/setup.sh"
  exit $NO_CUDA_LIBS
fi
# libtorch_cuda's own dependencies (cuBLAS, cuDNN, NCCL, ...) come from the
# nvidia-* wheels; the reference environment has them.
site=$("$py" -c 'import site; print(site.getsitepackages()[0])')
nv_path=$(ls -d "$site"/nvidia/*/lib 2>/dev/null | paste -sd: -)
export LD_LIBRARY_PATH="${nv_path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$(ldd "$torch_lib/libtorch_cuda.so" | grep 'not found')
if [[ -n "$missing" ]]; then
  say "libtorch_cuda.so cannot find these CUDA libraries (looked in $site/nvidia/*/lib and the system):"
  printf '%s\n' "$missing" >&2
  say "install torch==2.1.2 with its nvidia-* dependencies in conformance/.venv (conformance/setup-python.sh does)"
  exit $NO_CUDA_LIBS
fi
if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "the reference's torch sees no CUDA device (driver too old for CUDA 12.1?)"
  exit $NO_CUDA_LIBS
fi

# --- 2. builds ------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scripts/check-cuda-link.sh >"$work/link.txt" 2>&1 || { cat "$work/link.txt" >&2; say "CUDA link check failed"; exit 1; }
go build -tags cuda -o "$work/refiners-bench" ./cmd/refiners-bench || { say "go build -tags cuda ./cmd/refiners-bench failed"; exit 1; }

status=0
# --- 3. conformance on the GPU -------------------------------------------------
say "reference vectors on $device (float32, float16) ..."
if ! (cd conformance && "$repo/$py" generate_half.py --device "$device" --dtypes float32,float16 --out "$work/vectors") >"$work/generate.txt" 2>&1; then
  cat "$work/generate.txt" >&2
  say "the reference failed to write CUDA vectors"
  exit 1
fi
say "Go conformance on $device ..."
CONFORMANCE_DEVICE=$device CONFORMANCE_SPECS_DIR="$work/vectors" CONFORMANCE_REPORT="$work/report.txt" \
  go test -tags cuda -count=1 -run 'TestSpecs$' ./conformance >"$work/test.txt" 2>&1 || status=1

# --- 4. the benchmark ------------------------------------------------------------
for dt in float32 float16; do
  say "benchmark on $device, $dt ..."
  "$work/refiners-bench" -mode vs-refiners -device "$device" -dtype "$dt" -repeats "$repeats" -vs-models "$models" \
    -sd15-dir "$weights" -python "$py" >"$work/bench-$dt.txt" 2>&1 || status=1
done

# --- 5. one table ----------------------------------------------------------------
echo
echo "== GPU check: $(head -1 <<<"$gpus")"
echo
echo "-- conformance on $device (reference: Refiners 0.4.0 on the same GPU; pass: ratio ≤ 10)"
if [[ -s "$work/report.txt" ]]; then cat "$work/report.txt"; else tail -30 "$work/test.txt"; fi
for dt in float32 float16; do
  echo
  echo "-- Go / Refiners on $device, $dt"
  sed -n '/^| model/,/^(targets/p' "$work/bench-$dt.txt" | grep . || tail -20 "$work/bench-$dt.txt"
done
echo
if [[ $status -eq 0 ]]; then echo "gpu-check: PASS"; else echo "gpu-check: FAIL"; fi
exit $status
