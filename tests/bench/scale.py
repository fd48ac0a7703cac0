#!/usr/bin/python3
"""dicomfs at scale (issue 11, item 5): the cost of remembered files is flat.

  a  RSS and `ls -l` with many remembered files: a mount whose index
     (cache_dir/index.sqlite) holds --remembered rows in folders of
     --folder entries, filled directly with the schema of fs/index.c (as
     if that many files had been imported); measured: dicomfs RSS after the
     mount and after `ls -l` of one folder, and the time of that `ls -l`
     (first and second run). Targets: RSS <= 100 MiB, ls -l < 1 s.
  b  time per file of `cp -r` of N small files (--kib, 16 KiB) through the
     mount, for each N of --sizes, and time per file until `dicomfs wait`
     says every file is imported. Target: the per-file time of the largest
     N within +-20% of the smallest's.

Runs against dicomfs-emulator (instant profile) with the release build
(build-release/, as bench.py). Long by default (1 000 000 rows; N 10 000
and 200 000); --smoke is a tiny run that checks the harness only (its
figures mean nothing and nothing is asserted on speed).

usage: tests/bench/scale.py [--remembered 1000000] [--folder 10000]
         [--sizes 10000,200000] [--kib 16] [--skip-a] [--skip-b] [--smoke]
"""
import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402  (build, Emulator, Mount, DATASET_NAME)

MiB = 1 << 20


def rss_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


STUDY_FILES = 500  # instances per study: a CT series' order of magnitude


def template(path, kib):
    """One Part-10 file of about kib KiB whose Study and SOP Instance UIDs
    are fixed-length placeholders, so copies differ by patching bytes only."""
    from pydicom.uid import generate_uid
    sop = "1.2.826.0.1.3680043.10.511.9" + "0" * 24
    study = "1.2.826.0.1.3680043.10.511.8" + "0" * 24
    bench.make_dicom(path, study, generate_uid(), sop, kib * 1024)
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(sop.encode()) >= 2, "placeholder SOP Instance UID not found twice"
    assert data.count(study.encode()) >= 1, "placeholder Study UID not found"
    return data, sop.encode(), study.encode()


def make_files(root, n, kib, per_dir=1000):
    """n files (folders of per_dir), each a distinct instance, STUDY_FILES
    per study (the store's present check fetches a study's list once)."""
    data, sop, study = template(os.path.join(root, "template.dcm"), kib)
    os.remove(os.path.join(root, "template.dcm"))
    src = os.path.join(root, f"src{n}")
    tag = "%06d" % (int.from_bytes(os.urandom(3), "big") % 1000000)  # differs per run
    for i in range(n):
        d = os.path.join(src, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d)
        body = data.replace(sop, sop[:-24] + b"%024d" % (i + 1))
        body = body.replace(study, study[:-24] + b"%s%018d" % (tag.encode(), i // STUDY_FILES))
        with open(os.path.join(d, f"f{i:07d}.dcm"), "wb") as f:
            f.write(body)
    return src


def fill_index(cache, store, n, per_folder, folders):
    """n rows of store in folders[0..] (per_folder each), schema of fs/index.c."""
    db = sqlite3.connect(os.path.join(cache, "index.sqlite"))
    db.execute("INSERT OR IGNORE INTO stores(name) VALUES (?)", (store,))
    sid = db.execute("SELECT id FROM stores WHERE name = ?", (store,)).fetchone()[0]
    now = int(time.time())

    def rows():
        for i in range(n):
            parent = folders[(i // per_folder) % len(folders)]
            yield (sid, parent, f"f{i:07d}.dcm", "%032x" % (i + 1), 3, 16384, 0o644, os.getuid(),
                   os.getgid(), now, 0, now, 0, now, 0, f"1.2.826.0.1.3680043.10.511.{i + 1}",
                   "1.2.3", "1.2.3.4")
    db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   rows())
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def timed(argv):
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.monotonic() - t0


def measure_a(args, build_dir, work):
    emu = bench.Emulator(build_dir, work)
    try:
        store = "scale"
        os.makedirs(os.path.join(work, "a1"))
        m = bench.Mount(build_dir, emu, os.path.join(work, "a1"), uploads=0, name="mnt")
        os.mkdir(m.store_dir(store))
        imp = os.path.join(m.store_dir(store), "import")
        folders = [f"d{i:03d}" for i in range(max(1, args.remembered // args.folder))]
        for f in folders:
            os.mkdir(os.path.join(imp, f))
        m.stop()
        cache = m.cache
        bench.log(f"a: filling the index with {args.remembered} rows in {len(folders)} folders")
        t = time.monotonic()
        fill_index(cache, f"{bench.DATASET_NAME}/dicomStores/{store}", args.remembered,
                   args.folder, folders)
        size = os.path.getsize(os.path.join(cache, "index.sqlite")) / MiB
        bench.log(f"a: filled in {time.monotonic() - t:.1f} s, index.sqlite {size:.0f} MiB")
        # Remount on the same cache (bench.Mount's extra options come last:
        # this cache_dir wins over the new empty one it makes).
        w2 = os.path.join(work, "a2")
        os.makedirs(w2)
        os.environ["DICOMFS_BENCH_OPTS"] = f"cache_dir={cache}"
        try:
            m2 = bench.Mount(build_dir, emu, w2, uploads=0, name="mnt")
        finally:
            del os.environ["DICOMFS_BENCH_OPTS"]
        try:
            pid = m2.proc.pid
            imp = os.path.join(m2.store_dir(store), "import")
            rss0 = rss_kib(pid)
            t_ls1 = timed(["ls", "-l", os.path.join(imp, folders[0])])
            t_ls2 = timed(["ls", "-l", os.path.join(imp, folders[0])])
            n_ls = len(os.listdir(os.path.join(imp, folders[-1])))
            rss1 = rss_kib(pid)
            hwm = rss_kib(pid, "VmHWM")
            res = {"remembered": args.remembered, "folder": args.folder, "index_mib": size,
                   "rss_after_mount_mib": rss0 / 1024, "ls_l_first_s": t_ls1,
                   "ls_l_second_s": t_ls2, "rss_after_ls_mib": rss1 / 1024,
                   "peak_rss_mib": hwm / 1024, "last_folder_entries": n_ls}
        finally:
            m2.stop()
        return res
    finally:
        emu.stop()


def measure_b(args, build_dir, work, data_root):
    emu = bench.Emulator(build_dir, work)
    m = bench.Mount(build_dir, emu, work, uploads=0, name="mnt")
    res = []
    try:
        for n in args.sizes:
            bench.log(f"b: making {n} files of {args.kib} KiB")
            src = make_files(data_root, n, args.kib)
            store = f"b{n}"
            os.mkdir(m.store_dir(store))
            dst = os.path.join(m.store_dir(store), "import", "run")
            subprocess.run(["sync"])
            bench.log(f"b: cp -r of {n} files")
            t0 = time.monotonic()
            subprocess.run(["cp", "-r", src, dst], check=True, timeout=36000)
            t_cp = time.monotonic() - t0
            rc = m.wait(store)
            t_done = time.monotonic() - t0
            if rc != 0:
                raise RuntimeError(f"dicomfs wait exited {rc} for {store}")
            r = {"n": n, "cp_s": t_cp, "done_s": t_done, "cp_ms_per_file": 1000 * t_cp / n,
                 "done_ms_per_file": 1000 * t_done / n, "rss_mib": rss_kib(m.proc.pid) / 1024}
            bench.log(f"b: {r}")
            res.append(r)
            shutil.rmtree(src)
    finally:
        m.stop()
        emu.stop()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--remembered", type=int, default=1000000)
    ap.add_argument("--folder", type=int, default=10000)
    ap.add_argument("--sizes", default="10000,200000")
    ap.add_argument("--kib", type=int, default=16)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness only")
    args = ap.parse_args()
    if args.smoke:
        args.remembered, args.folder, args.sizes = 2000, 500, "100,300"
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    build_dir = bench.build()
    work = tempfile.mkdtemp(prefix="dicomfs-scale-")
    ok = True
    try:
        if not args.skip_a:
            a = measure_a(args, build_dir, os.path.join(work, "a"))
            print("RESULT a", json.dumps(a), flush=True)
            ok_a = a["rss_after_ls_mib"] <= 100 and a["ls_l_first_s"] < 1
            print(f"a: RSS {a['rss_after_mount_mib']:.1f} MiB after mount, "
                  f"{a['rss_after_ls_mib']:.1f} MiB after ls -l (target <= 100); "
                  f"ls -l of {args.folder} entries {a['ls_l_first_s']:.3f} s first, "
                  f"{a['ls_l_second_s']:.3f} s second (target < 1 s): "
                  f"{'met' if ok_a else 'NOT met'}")
            ok = ok and ok_a
        if not args.skip_b:
            os.makedirs(os.path.join(work, "b"))
            data = os.path.join(work, "data")
            os.makedirs(data)
            b = measure_b(args, build_dir, os.path.join(work, "b"), data)
            print("RESULT b", json.dumps(b), flush=True)
            base = b[0]["cp_ms_per_file"]
            for r in b:
                print(f"b: N={r['n']}: cp {r['cp_ms_per_file']:.3f} ms/file "
                      f"({100 * (r['cp_ms_per_file'] / base - 1):+.0f}% vs N={b[0]['n']}), "
                      f"until imported {r['done_ms_per_file']:.3f} ms/file, "
                      f"RSS {r['rss_mib']:.1f} MiB")
            spread = b[-1]["cp_ms_per_file"] / base - 1
            ok_b = abs(spread) <= 0.2
            print(f"b: per-file cp time from N={b[0]['n']} to N={b[-1]['n']}: "
                  f"{100 * spread:+.0f}% (target within +-20%): {'met' if ok_b else 'NOT met'}")
            ok = ok and ok_b
    finally:
        subprocess.run(["fusermount3", "-uz", os.path.join(work, "a", "a2", "mnt")],
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
