#!/usr/bin/python3
"""A/B of dicomfs builds or mount options in one run (the CPU view: instant
plain-http emulator): each variant copies the same N files into a new store's
import/ with `cp -r` and waits until `dicomfs wait` returns; variants run
alternately, --repeat rounds, medians printed. The raw limit (curl --parallel +
one import) runs once per round as the reference for client CPU per file.

usage: tests/bench/ab.py [--n 1000] [--size-kib 512] [--repeat 3] [--uploads 16]
         [--emu-args "FLAGS"] VARIANT...   where VARIANT is NAME=BUILD_DIR[:OPT,OPT...]
         (an OPT DICOMFS_X=V is set in dicomfs's environment instead; the
         diagnostics emu_nice=N (the emulator's threads at nice N) and emu_stop
         (the emulator SIGSTOPped during cp: nothing uploads, the files only
         spool; resumed before the wait) change the variant's emulator)
e.g.   tests/bench/ab.py base=/tmp/base/build-release new=build-release \\
                         wb=build-release:writeback_cache
       tests/bench/ab.py --uploads 0 --emu-args "--profile realistic --latency-ms 30 \\
                         --time-scale 0.02" base=/tmp/base/build-release new=build-release
Client CPU is cp + the whole dicomfs process from the start of cp until the
wait returns (uploads included), as in bench.py; the emulator's CPU over the
same time is printed beside it (it stands in for Google's side but shares
this machine's cores). --uploads 0: dicomfs's own (adaptive) upload
concurrency, curl's raw reference at 16. After the wait, the run waits until
the import's staged objects are deleted: "GCS req/file" counts the Cloud
Storage requests the emulator answered per file (uploads and deletes; its
own empty-bucket polls left out), "fs+del ms/file" the dicomfs process's CPU
per file up to then.
"""
import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def parse_variant(s):
    name, _, rest = s.partition("=")
    build_dir, _, opts = rest.partition(":")
    return name, os.path.abspath(build_dir), opts


def sectors_written():
    """Sectors written to the whole-disk block devices so far (all processes:
    other work on the machine counts too)."""
    total = 0
    with open("/proc/diskstats") as f:
        for ln in f:
            x = ln.split()
            if x[2].startswith(("vd", "sd", "nvme", "xvd")) and not x[2][-1].isdigit():
                total += int(x[9])
    return total


def ctx_switches(pid):
    """Context switches of every live thread of pid so far."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for ln in f:
                    if ln.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(ln.split()[1])
        except OSError:
            pass  # the thread ended meanwhile
    return total


def storage_requests(emu):
    """Cloud Storage requests the emulator answered so far (uploads included)."""
    k = emu.api("GET", "/_emulator/stats")["byKind"]
    return k["gcs"] + k["upload"] + k["download"]


def renice_all(pid, nice):
    """Every thread of pid (and so those it starts later) at nice."""
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(t), nice)
        except OSError:
            pass  # the thread ended meanwhile


def stopped_during_copy(b):
    """The emulator SIGSTOPped once the copy's store exists, until the wait."""
    pid = b.emu.proc.pid
    fresh_store, wait = b.fresh_store, b.mount.wait

    def fresh_then_stop(tag, mount=None):
        out = fresh_store(tag, mount)
        if mount is not None:
            os.kill(pid, signal.SIGSTOP)
        return out

    def cont_then_wait(store):
        os.kill(pid, signal.SIGCONT)
        return wait(store)
    b.fresh_store, b.mount.wait = fresh_then_stop, cont_then_wait


def run_variant(args, build_dir, opts, work, src, files, with_raw):
    items = [o for o in opts.split(",") if o]
    diag = [o for o in items if o.startswith("emu_")]  # the variant's emulator
    env = [o for o in items if o.startswith("DICOMFS_")]  # given to dicomfs's environment
    os.environ["DICOMFS_BENCH_OPTS"] = ",".join(o for o in items
                                                if o not in env and o not in diag)
    for k in [k for k in os.environ if k.startswith("DICOMFS_EXP")]:
        del os.environ[k]
    for e in env:
        k, _, v = e.partition("=")
        os.environ[k] = v
    b = bench.Bench(args, build_dir, work, emu_extra=shlex.split(args.emu_args))
    try:
        for o in diag:
            if o.startswith("emu_nice="):
                renice_all(b.emu.proc.pid, int(o.partition("=")[2]))
            elif o == "emu_stop":
                stopped_during_copy(b)
            else:
                raise SystemExit(f"unknown diagnostic {o}")
        w0 = sectors_written()
        c0 = ctx_switches(b.mount.proc.pid)
        r0, p0 = storage_requests(b.emu), bench.proc_cpu(b.mount.proc.pid)
        t_cp, t_done = b.dicomfs_cp(src)
        ctx = (ctx_switches(b.mount.proc.pid) - c0) / args.n
        fs_cpu, emu_cpu = b.cpu
        polls = b.emu.wait_bucket_empty()
        reqs = (storage_requests(b.emu) - r0 - polls) / args.n
        del_cpu = bench.proc_cpu(b.mount.proc.pid) - p0  # dicomfs alone, deletes included
        disk_mib = (sectors_written() - w0) * 512 / 2**20
        b.clean()  # the store's instances: raw starts from the same state
        raw_cpu = None
        if with_raw:
            renice_all(b.emu.proc.pid, 0)  # the references as always
            uploads, args.uploads = args.uploads, args.uploads or 16
            try:
                b.raw_parallel(files)
            finally:
                args.uploads = uploads
            b.clean()
            raw_cpu = (b.cpu[0], b.local_cp(src))
        return (t_cp, t_done, fs_cpu, raw_cpu, b.mount.peak_rss_kib(), disk_mib, ctx, emu_cpu,
                reqs, del_cpu)
    finally:
        b.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size-kib", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--uploads", type=int, default=16)
    p.add_argument("--emu-args", default="",
                   help="more emulator flags for every variant, e.g. the realistic profile")
    p.add_argument("variants", nargs="+")
    args = p.parse_args()
    args.studies, args.fs_uploads = 20, 0
    variants = [parse_variant(v) for v in args.variants]
    top = tempfile.mkdtemp(prefix="dicomfs-ab.")
    res = {name: [] for name, _, _ in variants}
    raw, local = [], []
    try:
        src = os.path.join(top, "data")
        files = bench.make_tree(src, args.n, args.size_kib * 1024, args.studies)
        for r in range(args.repeat):
            for i, (name, build_dir, opts) in enumerate(variants):
                work = tempfile.mkdtemp(prefix=f"{name}.", dir=top)
                out = run_variant(args, build_dir, opts, work, src, files, i == 0)
                shutil.rmtree(work, ignore_errors=True)
                res[name].append(out[:3] + out[4:])  # cp, done, cpu, rss, disk, ctx, emu, reqs, del_cpu
                if out[3] is not None:
                    raw.append(out[3][0])
                    local.append(out[3][1])
                bench.log(f"round {r + 1} {name}: cp {out[0]:.2f} s, done {out[1]:.2f} s, "
                          f"client CPU {out[2] / args.n * 1e3:.3f} ms/file, "
                          f"emulator CPU {out[7] / args.n * 1e3:.3f} ms/file, "
                          f"disk writes {out[5]:.0f} MiB, {out[6]:.1f} switches/file, "
                          f"{out[8]:.2f} storage requests/file, dicomfs CPU with deletes "
                          f"{out[9] / args.n * 1e3:.3f} ms/file")
        raw_ms = bench.median(raw) / args.n * 1e3
        local_s = bench.median(local)
        print(f"\nN={args.n} x {args.size_kib} KiB, uploads={args.uploads}, medians of "
              f"{args.repeat}; raw curl client CPU {raw_ms:.3f} ms/file; local cp -r "
              f"{local_s:.2f} s")
        print(f"{'variant':<12} {'cp s':>7} {'vs local':>8} {'done s':>7} {'CPU ms/file':>12} {'x curl':>7} "
              f"{'RSS MiB':>8} {'disk MiB':>9} {'switch/file':>11} {'emu ms/file':>11} "
              f"{'GCS req/file':>12} {'fs+del ms/file':>14}")
        for name, _, _ in variants:
            rows = res[name]
            cpu_ms = bench.median([x[2] for x in rows]) / args.n * 1e3
            cp_s = bench.median([x[0] for x in rows])
            print(f"{name:<12} {cp_s:7.2f} {local_s / cp_s:8.2f} "
                  f"{bench.median([x[1] for x in rows]):7.2f} {cpu_ms:12.3f} "
                  f"{cpu_ms / raw_ms:7.2f} {max(x[3] for x in rows) / 1024:8.1f} "
                  f"{bench.median([x[4] for x in rows]):9.0f} {bench.median([x[5] for x in rows]):11.1f} "
                  f"{bench.median([x[6] for x in rows]) / args.n * 1e3:11.3f} "
                  f"{bench.median([x[7] for x in rows]):12.2f} "
                  f"{bench.median([x[8] for x in rows]) / args.n * 1e3:14.3f}")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
