"""The emulator's cost of one 1 GiB upload, single request vs resumable
chunks: wall time and the emulator's CPU time per variant. Shows whether a
streamed (necessarily resumable) upload can beat cp + one media upload
against the emulator (see big_timeline.py and README "Large files").

Build the client-side driver first (an optimised build dir):
  cc -O2 -D_GNU_SOURCE -Iclient tests/bench/upload_micro.c \
     build-release/client/libdicomfs_client.a \
     $(pkg-config --libs libcurl libcjson libcrypto zlib) -lpthread -o /tmp/upload_micro
Run: BD=build-release /usr/bin/python3 tests/bench/resumable_cost.py [/tmp/upload_micro]
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main():
    micro = sys.argv[1] if len(sys.argv) > 1 else "/tmp/upload_micro"
    bd = os.environ.get("BD", "build-release")
    work = tempfile.mkdtemp(prefix="rescost.")
    emu = B.Emulator(bd, work)
    try:
        d = os.path.join(work, "src")
        os.mkdir(d)
        B.make_dicom(os.path.join(d, "big.dcm"), "1.2.3.9", "1.2.3.9.1", "1.2.3.9.1.1", 1 << 30)
        # threshold = chunk (MiB): 2048 = one media request, else resumable chunks
        for thr in ("2048", "16", "32", "128"):
            os.sync()
            c0, t0 = cpu(emu.proc.pid), time.monotonic()
            r = subprocess.run([micro, emu.url, B.BUCKET, d, "1", "t" + thr], capture_output=True,
                               text=True, env=dict(os.environ, UPLOAD_MICRO_THRESHOLD_MIB=thr))
            print("%s: wall %.2f s, emulator cpu %.2f s (%s)" % (
                "media" if thr == "2048" else "resumable %s MiB chunks" % thr,
                time.monotonic() - t0, cpu(emu.proc.pid) - c0,
                (r.stdout.strip().splitlines() or [r.stderr.strip()])[-1]), flush=True)
    finally:
        emu.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
