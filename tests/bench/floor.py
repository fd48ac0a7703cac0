#!/usr/bin/python3
"""The floor of any FUSE file system on this machine, for issue #14's CPU-view
targets (client CPU per file <= 2x curl's, cp -r into import/ >= 0.7 of a
local cp -r). One run copies the same N files (bench.py's data) with `cp -r`:
  local    to a directory on the disk that holds dicomfs's cache
  discard  into nullfs (tests/bench/nullfs.c), which drops the data
  spool    into nullfs -o spool=DIR, which pwrite()s each file to DIR
  wb       into nullfs discard -o writeback (FUSE_CAP_WRITEBACK_CACHE)
  dicomfs  into STORE/import/ (CPU view: instant plain-http emulator,
           uploads=--uploads), measured when cp ends and when `dicomfs wait`
           returns
  curl     curl --parallel uploads + one import (ab.py's CPU reference)
variants alternating (the order rotates each round), --repeat rounds,
medians printed: copy time against the local cp, client CPU per file (cp +
the file system's process) against curl's, context switches per file (the
file system's threads, and cp). First it counts the FUSE requests nullfs
gets per file (-d, a few files), with and without -o killpriv.

usage: tests/bench/floor.py [--n 1000] [--size-kib 512] [--repeat 5] [--uploads 16]
The build is bench.py's (build-release/, or $DICOMFS_BENCH_BUILD).
"""
import argparse
import collections
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ab  # noqa: E402
import bench  # noqa: E402


class NullFs:
    """A nullfs mount in work/; spool: the directory it writes the data to."""

    def __init__(self, build_dir, work, spool=None, extra=(), log=None):
        self.mnt = tempfile.mkdtemp(prefix="nullfs.", dir=work)
        opts = ["-o", f"spool={spool}"] if spool else []
        self.proc = subprocess.Popen(
            [os.path.join(build_dir, "tests", "bench", "nullfs"), self.mnt, *opts, *extra],
            stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nullfs did not mount")
            time.sleep(0.02)

    def stop(self):
        subprocess.run(["fusermount3", "-u", self.mnt], check=True)
        self.proc.wait(30)
        os.rmdir(self.mnt)


def cp_switches():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_nvcsw + r.ru_nivcsw


def check_copy(src, dst):
    """Every file of src is in dst with its size (nullfs answers getattr)."""
    for d, _, names in os.walk(src):
        for n in names:
            p = os.path.join(d, n)
            q = os.path.join(dst, os.path.relpath(p, src))
            if os.stat(q).st_size != os.stat(p).st_size:
                raise RuntimeError(f"{q}: wrong size")


def copy(b, src, dst, fs=None):
    """cp -r src dst from a cold page cache; fs: the mount's process."""
    bench.drop_caches()
    meter = bench.CpuMeter(b.emu, fs)
    s0, c0 = ab.ctx_switches(fs.proc.pid) if fs else 0, cp_switches()
    t = bench.timed(lambda: bench.run(["cp", "-r", src, dst]))
    meter.stop()
    s1 = ab.ctx_switches(fs.proc.pid) if fs else 0
    return {"t": t, "cp": meter.split[0], "fs": meter.split[1], "sw_fs": s1 - s0,
            "sw_cp": cp_switches() - c0}


def run_local(b, src, work):
    dst = os.path.join(work, "local")
    out = copy(b, src, dst)
    shutil.rmtree(dst)
    return out


def run_nullfs(b, src, work, spool, extra=()):
    sdir = os.path.join(work, "spool") if spool else None
    if sdir:
        os.mkdir(sdir)
    fs = NullFs(b.build_dir, work, sdir, extra)
    try:
        out = copy(b, src, os.path.join(fs.mnt, "run"), fs)
        check_copy(src, os.path.join(fs.mnt, "run"))
    finally:
        fs.stop()
    if sdir:
        shutil.rmtree(sdir)
    return out


def run_dicomfs(b, src):
    """Two rows: when cp ends, and when `dicomfs wait` returns."""
    pid, at_cp, meters = b.mount.proc.pid, {}, []
    s0, c0 = ab.ctx_switches(pid), cp_switches()

    def copied(meter):
        meter.stop()
        meters.append(meter)
        at_cp.update(cp=meter.split[0], fs=meter.split[1], sw_fs=ab.ctx_switches(pid) - s0,
                     sw_cp=cp_switches() - c0)
    t_cp, t_done = b.dicomfs_cp(src, copied)
    cp_cpu, fs_cpu = meters[0].split  # the last stop(): when the wait returned
    return (dict(at_cp, t=t_cp),
            {"t": t_done, "cp": cp_cpu, "fs": fs_cpu, "sw_fs": ab.ctx_switches(pid) - s0,
             "sw_cp": cp_switches() - c0})


def run_curl(b, files):
    c0 = cp_switches()
    t = b.raw_parallel(files)
    return {"t": t, "cp": b.cpu[0], "fs": 0.0, "sw_fs": 0, "sw_cp": cp_switches() - c0}


def count_requests(build_dir, work, nfiles, size, extra=()):
    """FUSE requests nullfs -d gets for cp -r of nfiles in one directory."""
    src = os.path.join(work, "req-src", "d")
    os.makedirs(src)
    for i in range(nfiles):
        with open(os.path.join(src, f"f{i}"), "wb") as f:
            f.write(os.urandom(size))
    log_path = os.path.join(work, "nullfs-d.log")
    with open(log_path, "w") as log:
        fs = NullFs(build_dir, work, None, ["-d", *extra], log)
        try:
            bench.run(["cp", "-r", src, os.path.join(fs.mnt, "d")])
        finally:
            fs.stop()
    with open(log_path) as f:
        text = f.read()
    ops = collections.Counter(re.findall(r"opcode: ([A-Z_]+)", text))
    ops["GETXATTR security.capability"] = text.count("security.capability")
    flags = re.findall(r"flags=(0x[0-9a-f]+)", text)  # offered, then replied
    shutil.rmtree(os.path.dirname(src))
    return ops, flags


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size-kib", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--uploads", type=int, default=16)
    args = p.parse_args()
    args.studies, args.fs_uploads = 20, 0
    build_dir = bench.build()
    bench.run(["ninja", "-C", build_dir, "tests/bench/nullfs"], stdout=subprocess.DEVNULL)
    top = tempfile.mkdtemp(prefix="dicomfs-floor.")
    try:
        for extra, size in (((), 512 << 10), ((), 4 << 20), (("-okillpriv",), 4 << 20),
                            (("-owriteback",), 512 << 10)):
            ops, flags = count_requests(build_dir, top, 4, size, extra)
            print(f"nullfs {' '.join(extra) or '(defaults)'}, cp -r of 4 x {size >> 10} KiB: "
                  f"{dict(sorted(ops.items()))}; INIT flags offered/replied {flags}")
        src = os.path.join(top, "data")
        files = bench.make_tree(src, args.n, args.size_kib * 1024, args.studies)
        names = ["local", "discard", "spool", "wb", "dicomfs", "curl"]
        res = collections.defaultdict(list)
        for r in range(args.repeat):
            work = tempfile.mkdtemp(prefix="round.", dir=top)
            b = bench.Bench(args, build_dir, work)
            try:
                for name in names[r % len(names):] + names[:r % len(names)]:
                    if name == "local":
                        res[name].append(run_local(b, src, work))
                    elif name in ("discard", "spool", "wb"):
                        res[name].append(run_nullfs(b, src, work, name == "spool",
                                                    ["-owriteback"] if name == "wb" else []))
                    elif name == "dicomfs":
                        at_cp, done = run_dicomfs(b, src)
                        res["dicomfs cp"].append(at_cp)
                        res["dicomfs wait"].append(done)
                    else:
                        res[name].append(run_curl(b, files))
                    b.clean()  # its objects and store gone before the next variant
            finally:
                b.stop()
                shutil.rmtree(work, ignore_errors=True)
            bench.log(f"round {r + 1}: " + ", ".join(
                f"{k} {v[-1]['t']:.2f} s {(v[-1]['cp'] + v[-1]['fs']) / args.n * 1e3:.3f} ms/file"
                for k, v in res.items()))
        report(res, args)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def report(res, args):
    def med(name, key):
        return bench.median([x[key] for x in res[name]])

    def per_file(name, key):
        return med(name, key) / args.n * 1e3

    local_t = med("local", "t")
    curl_ms = bench.median([(x["cp"] + x["fs"]) for x in res["curl"]]) / args.n * 1e3
    print(f"\nN={args.n} x {args.size_kib} KiB, uploads={args.uploads}, medians of "
          f"{args.repeat} rounds; local cp -r {local_t:.2f} s; curl client CPU "
          f"{curl_ms:.3f} ms/file")
    print(f"{'variant':<13} {'time s':>7} {'local/t':>7} {'CPU ms/file':>11} {'x curl':>6} "
          f"{'cp ms':>6} {'fs ms':>6} {'fs sw/file':>10} {'cp sw/file':>10}")
    for name in ["local", "discard", "spool", "wb", "dicomfs cp", "dicomfs wait", "curl"]:
        cpu = bench.median([(x["cp"] + x["fs"]) for x in res[name]]) / args.n * 1e3
        print(f"{name:<13} {med(name, 't'):7.2f} {local_t / med(name, 't'):7.2f} {cpu:11.3f} "
              f"{cpu / curl_ms:6.2f} {per_file(name, 'cp'):6.3f} {per_file(name, 'fs'):6.3f} "
              f"{med(name, 'sw_fs') / args.n:10.1f} {med(name, 'sw_cp') / args.n:10.1f}")


if __name__ == "__main__":
    sys.exit(main())
