#!/usr/bin/env bash
# Builds the previous release's worker binary once and prints its path, for
# the rolling-upgrade tests (ADR 0019: the previous release folds this
# build's deltas and the reverse). The previous release is the commit below;
# move it forward with each release.
#
#   scripts/previous-release.sh TARGET_DIR
#
# The sources come from `git archive` (fetched when a shallow clone lacks the
# commit) and build into TARGET_DIR, so dependencies already built there are
# reused; only the workspace crates compile. Kept under
# TARGET_DIR/previous-release/<commit>/ and reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=68c804aa274e5ba39372b5e1678748987d76c756
target_dir=${1:?usage: scripts/previous-release.sh TARGET_DIR}
out=$target_dir/previous-release/$commit/postgres-writer
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  git fetch --quiet --depth 1 origin "$commit" >&2
fi
src=$target_dir/previous-release/src
rm -rf "$src"
mkdir -p "$src"
git archive "$commit" | tar -x -C "$src"
# Its own copy of the binary: the next build of this tree puts its own back.
(cd "$src" && CARGO_TARGET_DIR=$target_dir cargo build --quiet --bin postgres-writer >&2)
mkdir -p "$(dirname "$out")"
if [ -n "${LLVM_PROFILE_FILE:-}" ]; then
  # Built under cargo-llvm-cov (to share its dependencies): the old binary's
  # coverage profiles go elsewhere, so that they never mix with this tree's.
  cp "$target_dir/debug/postgres-writer" "$out.bin"
  cat >"$out.tmp" <<'SH'
#!/bin/sh
LLVM_PROFILE_FILE=${TMPDIR:-/tmp}/pgw-previous-release-%p.profraw exec "$0.bin" "$@"
SH
  chmod +x "$out.tmp"
else
  cp "$target_dir/debug/postgres-writer" "$out.tmp"
fi
mv "$out.tmp" "$out"
rm -rf "$src"
echo "$out"
