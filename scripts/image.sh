#!/usr/bin/env bash
# The worker and operator images as OCI image tarballs, without Docker or a
# registry (docs/adr/0017): each image is one layer holding the release
# binary, the shared libraries it links (from ldd, with the dynamic loader)
# and what distroless/cc gives a non-root process (/etc/passwd with nonroot
# 65532, /etc/group, /etc/nsswitch.conf, /tmp, /home/nonroot). The user,
# entrypoint, command, ports and binary path are those of the final stage of
# docker/*.Dockerfile (operator/tests/images.rs checks that they agree); the
# Dockerfiles stay the release path where Docker exists. The layer is written
# deterministically (sorted, mtime 0, numeric owners, gzip -n): the same
# binaries and libraries give the same digests.
#
#   scripts/image.sh build [--tag TAG] [--out DIR] [--binaries DIR]
#       cargo build --release of both binaries (skipped with --binaries, a
#       directory holding postgres-writer and postgres-writer-operator), then
#       writes DIR/postgres-writer-TAG.oci.tar and
#       DIR/postgres-writer-operator-TAG.oci.tar, named
#       localhost/postgres-writer:TAG and localhost/postgres-writer-operator:TAG
#       (defaults: TAG dev, DIR target/images).
#   scripts/image.sh import --address SOCKET FILE...
#       ctr images import into containerd's k8s.io namespace (the kubelet's).
#   scripts/image.sh config IMAGE
#       prints the image's runtime config (IMAGE: postgres-writer or
#       postgres-writer-operator) as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "image.sh: $*" >&2; exit 1; }

# What each image runs; kept equal to the Dockerfile's final stage.
image_spec() { # IMAGE -> sets binary, port
  case $1 in
    postgres-writer) binary=/usr/local/bin/postgres-writer port=8080 ;;
    postgres-writer-operator) binary=/usr/local/bin/postgres-writer-operator port=8081 ;;
    *) die "unknown image '$1' (postgres-writer, postgres-writer-operator)" ;;
  esac
}
readonly user=65532:65532 cmd=run home=/home/nonroot
readonly path_env=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

config_json() { # IMAGE
  image_spec "$1"
  printf '{"User":"%s","ExposedPorts":{"%s/tcp":{}},"Env":["PATH=%s"],"Entrypoint":["%s"],"Cmd":["%s"],"WorkingDir":"%s"}' \
    "$user" "$port" "$path_env" "$binary" "$cmd" "$home"
}

oci_arch() {
  case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) die "unsupported machine $(uname -m)" ;;
  esac
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Copies FILE into the rootfs at PATH (default: the same path), following
# links, mode 0755 for executables and libraries.
put() { # ROOTFS FILE [PATH]
  local dest=$1${3:-$2}
  mkdir -p "$(dirname "$dest")"
  cp -L "$2" "$dest"
  chmod 0755 "$dest"
}

# The shared libraries BINARY links and its dynamic loader, as ldd prints them.
libraries() { # BINARY
  local out
  out=$(ldd "$1" 2>&1) || die "ldd $1: $out"
  case $out in
    *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
    *"not found"*) die "ldd $1: a library is missing: $out" ;;
  esac
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

rootfs() { # IMAGE BINARY DIR
  local image=$1 source=$2 root=$3 lib
  image_spec "$image"
  mkdir -p "$root"/etc "$root"/tmp "$root"/root "$root$home"
  put "$root" "$source" "$binary"
  while read -r lib; do
    [ -n "$lib" ] && put "$root" "$lib"
  done < <(libraries "$source")
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    "nonroot:x:65532:65532:nonroot:$home:/sbin/nologin" >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
  find "$root" -type d -exec chmod 0755 {} +
  find "$root/etc" -type f -exec chmod 0644 {} +
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root" "$root$home"
}

# A deterministic tar of DIR: sorted names, mtime 0, no atime/ctime, root
# owns everything except the home directory of 65532.
layer_tar() { # DIR OUT
  local flags=(--format=gnu --sort=name --mtime=@0 --numeric-owner --no-acls --no-xattrs --no-selinux)
  (cd "$1" && tar -cf "$2" "${flags[@]}" --owner=0 --group=0 --exclude=".${home}" . &&
    tar -rf "$2" "${flags[@]}" --owner=65532 --group=65532 ".${home}")
}

blob() { # LAYOUT FILE -> moves FILE into the layout's blobs, prints its digest
  local digest
  digest=$(sha256 "$2")
  mv "$2" "$1/blobs/sha256/$digest"
  echo "$digest"
}

build_image() { # IMAGE BINARY TAG OUT WORKDIR SHOWN_OUT
  local image=$1 source=$2 tag=$3 out=$4 work=$5 shown=$6 layout arch
  layout=$work/layout
  mkdir -p "$layout/blobs/sha256"
  rootfs "$image" "$source" "$work/rootfs"
  layer_tar "$work/rootfs" "$work/layer.tar"
  local diff_id layer layer_size config config_size manifest manifest_size ref
  diff_id=$(sha256 "$work/layer.tar")
  gzip -n -6 <"$work/layer.tar" >"$work/layer.tar.gz"
  layer_size=$(size "$work/layer.tar.gz")
  layer=$(blob "$layout" "$work/layer.tar.gz")
  arch=$(oci_arch)
  printf '{"created":"1970-01-01T00:00:00Z","architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/image.sh"}]}' \
    "$arch" "$(config_json "$image")" "$diff_id" >"$work/config.json"
  config_size=$(size "$work/config.json")
  config=$(blob "$layout" "$work/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
  manifest_size=$(size "$work/manifest.json")
  manifest=$(blob "$layout" "$work/manifest.json")
  ref=localhost/$image:$tag
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$arch" "$ref" "$tag" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  (cd "$layout" && tar -cf "$work/image.tar" --format=gnu --sort=name --mtime=@0 \
    --owner=0 --group=0 --numeric-owner --mode=u=rwX,go=rX oci-layout index.json blobs)
  mv "$work/image.tar" "$out/$image-$tag.oci.tar"
  printf '%s\t%s\t%s\tsha256:%s\n' "$ref" "$shown/$image-$tag.oci.tar" \
    "$(size "$out/$image-$tag.oci.tar")" "$manifest"
}

build() {
  local tag=dev out=target/images binaries=""
  while [ $# -gt 0 ]; do
    case $1 in
      --tag) tag=${2:?--tag needs a value}; shift 2 ;;
      --out) out=${2:?--out needs a value}; shift 2 ;;
      --binaries) binaries=${2:?--binaries needs a value}; shift 2 ;;
      *) die "build: unknown argument '$1'" ;;
    esac
  done
  # The OCI tag grammar.
  [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag '$tag' (letters, digits, _ . -; at most 128)"
  if [ -z "$binaries" ]; then
    cargo build --release --locked -p worker --bin postgres-writer -p operator --bin postgres-writer-operator
    binaries=${CARGO_TARGET_DIR:-target}/release
  fi
  local image
  for image in postgres-writer postgres-writer-operator; do
    [ -x "$binaries/$image" ] || die "no executable $binaries/$image"
  done
  mkdir -p "$out"
  local shown=${out%/}
  out=$(cd "$out" && pwd)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  printf 'image\tfile\tbytes\tmanifest\n'
  for image in postgres-writer postgres-writer-operator; do
    mkdir "$work/$image"
    build_image "$image" "$(cd "$binaries" && pwd)/$image" "$tag" "$out" "$work/$image" "$shown"
  done
}

import() {
  local address=""
  while [ $# -gt 0 ]; do
    case $1 in
      --address) address=${2:?--address needs a value}; shift 2 ;;
      --) shift; break ;;
      -*) die "import: unknown argument '$1'" ;;
      *) break ;;
    esac
  done
  [ -n "$address" ] || die "import: --address SOCKET is required (containerd's socket)"
  [ $# -gt 0 ] || die "import: no image file given"
  local file
  for file in "$@"; do
    [ -f "$file" ] || die "import: no file $file"
    ctr --address "$address" -n k8s.io images import "$file"
  done
}

case ${1:-} in
  build) shift; build "$@" ;;
  import) shift; import "$@" ;;
  config) [ $# -eq 2 ] || die "usage: image.sh config IMAGE"; config_json "$2"; echo ;;
  *) die "usage: image.sh build [--tag TAG] [--out DIR] [--binaries DIR] | import --address SOCKET FILE... | config IMAGE" ;;
esac
