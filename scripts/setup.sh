#!/usr/bin/env bash
# One-time machine set-up for building refiners-go: libtorch 2.1.2 and the
# patched gotch copy go.mod points at. Idempotent; a second run takes well
# under a second. The first `go build` afterwards compiles gotch's C++
# (about 2 minutes on 2 cores); Go's build cache keeps it across clones.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/setup-libtorch.sh"
"$here/setup-gotch.sh"
