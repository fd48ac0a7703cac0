#!/usr/bin/env bash
# dicomfs demo: installs what is missing, builds, starts the local emulator,
# mounts it, imports sample DICOM files made by pydicom, shows the operation
# JSON, and leaves the mount up to explore.
#
#   contrib/demo.sh         start (idempotent: stops a previous demo first)
#   contrib/demo.sh stop    unmount, stop the emulator, remove the demo dir
#
# Everything lives under $DICOMFS_DEMO_DIR (default /tmp/dicomfs-demo).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
DEMO=${DICOMFS_DEMO_DIR:-/tmp/dicomfs-demo}
BUILD="$top/build-release"
PY=/usr/bin/python3
MNT="$DEMO/mnt"
PROJECT=demo-project
LOCATION=us-central1
DATASET=demo
STORE=images

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_demo() {
  if mountpoint -q "$MNT" 2>/dev/null; then
    fusermount3 -u "$MNT" || fusermount3 -uz "$MNT" || true
  fi
  for f in "$DEMO/dicomfs.pid" "$DEMO/emulator.pid"; do
    if [ -f "$f" ]; then
      pid=$(cat "$f")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$f"
    fi
  done
}

if [ "${1:-}" = stop ]; then
  stop_demo
  rm -rf "$DEMO"
  echo "demo stopped"
  exit 0
fi

say "installing dependencies (Debian packages)"
bash "$top/contrib/install-deps.sh"

say "building"
reconf=(); [ -f "$BUILD/build.ninja" ] && reconf=(--reconfigure)
meson setup "${reconf[@]}" "$BUILD" --buildtype=release >"$top/build-release.log" 2>&1 \
  || { cat "$top/build-release.log"; exit 1; }
ninja -C "$BUILD" >>"$top/build-release.log" 2>&1 || { tail -40 "$top/build-release.log"; exit 1; }
EMU="$BUILD/contrib/emulator/dicomfs-emulator"
DICOMFS="$BUILD/fs/dicomfs"

stop_demo
rm -rf "$DEMO"
mkdir -p "$DEMO/emulator-data" "$DEMO/cache" "$DEMO/samples" "$MNT"
chmod 700 "$DEMO/cache"

say "starting the local emulator (Healthcare API, Cloud Storage, OAuth2 on 127.0.0.1)"
"$EMU" --listen 127.0.0.1:0 --data "$DEMO/emulator-data" \
  --project "$PROJECT" --location "$LOCATION" --dataset "$DATASET" --store "$STORE" \
  --bucket staging --write-credentials "$DEMO/credentials.json" --lro-delay 1000 \
  >"$DEMO/emulator.log" 2>&1 &
echo $! >"$DEMO/emulator.pid"
for _ in $(seq 100); do
  grep -q "ready on" "$DEMO/emulator.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "ready on" "$DEMO/emulator.log" || { cat "$DEMO/emulator.log"; exit 1; }
envline=$(grep '^export ' "$DEMO/emulator.log" | head -1)
eval "$envline"
echo "$envline" >"$DEMO/env.sh"
echo "$envline"

say "making sample DICOM files with pydicom (3 studies x 2 series x 3 instances)"
(cd "$top" && "$PY" -c "
import sys
sys.path.insert(0, 'tests/integration')
import dicom_samples
dicom_samples.make_tree('$DEMO/samples', 3, 2, 3)
")
find "$DEMO/samples" -type f | head -3
echo "... $(find "$DEMO/samples" -type f | wc -l) files"

say "mounting projects/$PROJECT/locations/$LOCATION on $MNT"
"$DICOMFS" "projects/$PROJECT/locations/$LOCATION" "$MNT" -f \
  -o "staging=gs://staging/dicomfs,cache_dir=$DEMO/cache,commit_delay=2" \
  >"$DEMO/dicomfs.log" 2>&1 &
echo $! >"$DEMO/dicomfs.pid"
for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.1; done
mountpoint -q "$MNT" || { cat "$DEMO/dicomfs.log"; exit 1; }
ls -l "$MNT" "$MNT/$DATASET" "$MNT/$DATASET/$STORE"

STOREDIR="$MNT/$DATASET/$STORE"
say "cp -r samples into $STOREDIR/import/"
cp -r "$DEMO/samples/." "$STOREDIR/import/"
cat "$STOREDIR/status"

say "dicomfs wait: until every file is imported"
"$DICOMFS" wait "$STOREDIR"

say "the import operation (cat $STOREDIR/operations/*.json)"
ls -l "$STOREDIR/operations/"
for f in "$STOREDIR"/operations/*.json; do cat "$f"; done

cat <<EOF

The mount stays up. Things to try:
  ls $STOREDIR/studies/                       # what the store holds (DICOMweb)
  cp some.dcm $STOREDIR/import/               # import more; then: $DICOMFS wait $STOREDIR
  echo "/studies/<StudyInstanceUID>" > $STOREDIR/export/dicom/one   # filtered export
  ls $STOREDIR/export/dicom/one.out/          # exported files once the operation is done
  cat $MNT/$DATASET/operations/*.json         # every operation of the dataset
  cat $STOREDIR/status                        # background progress
Logs: $DEMO/dicomfs.log, $DEMO/emulator.log
Stop: contrib/demo.sh stop
EOF
