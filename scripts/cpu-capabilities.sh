#!/usr/bin/env bash
# Prints the ATEN_CPU_CAPABILITY values libtorch 2.1 can use on this CPU,
# one per line: "default" always, "avx2" with AVX2 and FMA, "avx512" with
# the AVX-512 subsets ATen's avx512 kernels need (F, BW, VL, DQ). ATen
# trusts the variable without checking the CPU, so a value the CPU lacks
# would die of an illegal instruction: only these are listed.
set -euo pipefail
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { for f in "$@"; do [[ " $flags " == *" $f "* ]] || return 1; done; }
echo default
if has avx2 fma; then echo avx2; fi
if has avx512f avx512bw avx512vl avx512dq; then echo avx512; fi
