#!/usr/bin/env bash
# Builds the Versity S3 Gateway (the S3 server the store's S3 tests and
# `make scaleout` run on loopback) from tools/versitygw, a module of its own
# so that its dependencies stay out of the main go.mod. The binary is kept
# in a cache folder named after the pinned version; the path is printed.
# The first build takes minutes (see docs/deploy.md); later calls return at once.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^\tgithub.com\/versity\/versitygw \(v[^ ]*\).*/\1/p' "$here/tools/versitygw/go.mod")
if [ -z "$version" ]; then
	echo "build-versitygw: no versitygw version in tools/versitygw/go.mod" >&2
	exit 1
fi
cache=${REFINERS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refiners-go/tools}
bin=$cache/versitygw-$version
if [ ! -x "$bin" ]; then
	mkdir -p "$cache"
	start=$(date +%s)
	echo "build-versitygw: building versitygw $version into $cache (first time only)" >&2
	(cd "$here/tools/versitygw" && go build -trimpath -o "$bin.tmp.$$" github.com/versity/versitygw/cmd/versitygw)
	mv "$bin.tmp.$$" "$bin"
	echo "build-versitygw: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
