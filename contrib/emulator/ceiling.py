#!/usr/bin/python3
"""The emulator's ceiling: how fast it takes uploads and imports, against a
local copy of the same bytes on the same disk (issue 6, item 4).

    /usr/bin/python3 contrib/emulator/ceiling.py [--build build-release]
        [--counts 500,2000] [--size-kib 512] [--big-mib 1024] [--reps 3]

For each count: `cp -r` of the tree to a directory next to the emulator's
data, `curl --parallel --parallel-max 16` media uploads of the same files to
the emulated bucket, and one dicomStores.import of gs://BUCKET/PREFIX/**
polled until done. Then the same for one big file. Prints a markdown table
of medians. The data (made by tests/bench/bench.py's pydicom generator) is
kept in --data between runs so before/after comparisons use the same files.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "tests", "bench"))
import bench  # noqa: E402  (the data generator and the emulator wrapper)


def tree_files(root):
    out = []
    for d, _, fs in os.walk(root):
        out += [os.path.join(d, f) for f in fs if f.endswith(".dcm")]
    return sorted(out)


def ensure_data(data_dir, n, size, big_mib):
    root = os.path.join(data_dir, f"tree-{n}x{size}")
    if n and not os.path.exists(os.path.join(root, ".done")):
        shutil.rmtree(root, ignore_errors=True)
        bench.make_tree(root, n, size, 20)
        open(os.path.join(root, ".done"), "w").close()
    big = os.path.join(data_dir, f"big-{big_mib}.dcm")
    if big_mib and not os.path.exists(big + ".done"):
        from pydicom.uid import generate_uid
        bench.make_dicom(big, generate_uid(), generate_uid(), generate_uid(), big_mib << 20)
        open(big + ".done", "w").close()
    return root, big


def curl_upload(emu, files, prefix, par):
    cfg = os.path.join(emu.work, f"curl-{prefix.replace('/', '-')}.cfg")
    with open(cfg, "w") as f:
        for i, p in enumerate(files):
            f.write(f'url = "{emu.url}/upload/storage/v1/b/{bench.BUCKET}/o'
                    f'?uploadType=media&name={prefix}%2F{i:06d}.dcm"\n')
            f.write(f'upload-file = "{p}"\n')
            f.write('output = "/dev/null"\n')
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", str(par),
                    "-X", "POST", "-H", "Content-Type: application/dicom", "-K", cfg],
                   check=True)
    return time.monotonic() - t0


def import_time(emu, prefix, store_id):
    name = emu.create_store(store_id)
    t0 = time.monotonic()
    op = emu.import_and_wait(name, f"gs://{bench.BUCKET}/{prefix}/**")
    if "error" in op:
        raise RuntimeError(f"import of {prefix} failed: {op['error']}")
    return time.monotonic() - t0


def cp_time(src, dst):
    t0 = time.monotonic()
    subprocess.run(["cp", "-r", src, dst], check=True)
    # Like the uploads, into the page cache: the disk's write-back (shared
    # with every other process) is left out of both sides.
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(TOP, "build-release"))
    ap.add_argument("--counts", default="500,2000")
    ap.add_argument("--size-kib", type=int, default=512)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "emu-ceiling-data"))
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    work = tempfile.mkdtemp(prefix="emu-ceiling-", dir=args.data)
    emu = bench.Emulator(args.build, work)
    emu.work = work
    rows = []
    try:
        counts = [int(c) for c in args.counts.split(",") if c]
        for n in counts:
            root, big = ensure_data(args.data, n, args.size_kib << 10, 0)
            files = tree_files(root)
            mib = sum(os.path.getsize(p) for p in files) / 2**20
            cps, ups, imps = [], [], []
            for r in range(args.reps):
                os.sync()
                cps.append(cp_time(root, os.path.join(work, f"cp-{n}-{r}")))
                shutil.rmtree(os.path.join(work, f"cp-{n}-{r}"))
                os.sync()
                ups.append(curl_upload(emu, files, f"c{n}/r{r}", args.parallel))
                os.sync()
                imps.append(import_time(emu, f"c{n}/r{r}", f"c{n}r{r}"))
            rows.append((f"{n} x {args.size_kib} KiB", n, mib, statistics.median(cps),
                         statistics.median(ups), statistics.median(imps)))
        if args.big_mib:
            _, big = ensure_data(args.data, 0, 0, args.big_mib)
            mib = os.path.getsize(big) / 2**20
            cps, ups, imps = [], [], []
            for r in range(args.reps):
                os.sync()
                dst = os.path.join(work, f"big-{r}.dcm")
                cps.append(cp_time(big, dst))
                os.unlink(dst)
                os.sync()
                ups.append(curl_upload(emu, [big], f"big/r{r}", 1))
                os.sync()
                imps.append(import_time(emu, f"big/r{r}", f"bigr{r}"))
            rows.append((f"1 x {args.big_mib} MiB", 1, mib, statistics.median(cps),
                         statistics.median(ups), statistics.median(imps)))
    finally:
        emu.proc.terminate()
        emu.proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("| data | cp files/s | cp MiB/s | upload files/s | upload MiB/s | upload/cp "
          "| import s | import files/s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, n, mib, cp, up, imp in rows:
        print(f"| {label} | {n / cp:.3g} | {mib / cp:.0f} | {n / up:.3g} | {mib / up:.0f} "
              f"| {cp / up:.2f} | {imp:.2f} | {n / imp:.3g} |")


if __name__ == "__main__":
    main()
