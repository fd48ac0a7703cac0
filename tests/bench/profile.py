#!/usr/bin/python3
"""Where the client's CPU goes per file: perf (software clock sampling; this VM
has no hardware counters) and strace -c on dicomfs during `cp -r` of N files
into import/ until `dicomfs wait` returns, against the instant plain-http
emulator (the benchmark's CPU view). Prints per-file CPU, the top symbols and
the syscall counts per file; tests/bench/PROFILE.md records the results.

usage: tests/bench/profile.py [--n 1000] [--size-kib 512] [--uploads 16]
         [--top 25] [--system [--after-rm] [--save F.json]] [--compare A.json B.json]
         (DICOMFS_BENCH_BUILD=DIR measures another build; DICOMFS_PROFILE_KEEP=1
         keeps the work dir with the perf.data files)

--system: the machine-wide view instead, for both the raw curl upload and
dicomfs's cp: `perf record -a` split by process (client = the dicomfs daemon
and this script's children cp, curl, dicomfs wait; the emulator; the rest of
the machine by process name), /proc/vmstat deltas per file
(reclaim, write-back), the peak of Dirty/Writeback, and counts of the
write-back throttling and direct-reclaim tracepoints; --save keeps it as JSON;
--after-rm runs each variant after local copies made and removed, as bench.py.
--compare A B: per-file figures of two saved runs (e.g. N=1000 and N=8000)
side by side, largest growth first: what grows with N.
"""
import argparse
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


HZ = 999  # perf's sampling rate: a sample is 1/HZ s of CPU
VMSTAT = ("pgscan_kswapd", "pgscan_direct", "pgsteal_kswapd", "pgsteal_direct",
          "allocstall_normal", "allocstall_movable", "pgmajfault", "pgfault", "pgalloc_normal",
          "pgfree", "nr_dirtied", "nr_written", "pgpgin", "pgpgout", "pgactivate",
          "pgdeactivate", "workingset_refault_file", "compact_stall", "slabs_scanned",
          "kswapd_inodesteal", "pginodesteal")
TRACEPOINTS = ("writeback:balance_dirty_pages", "vmscan:mm_vmscan_direct_reclaim_begin",
               "vmscan:mm_vmscan_kswapd_wake", "writeback:writeback_start",
               "ext4:ext4_discard_blocks", "ext4:ext4_allocate_inode")


def read_kv(path, sep=None):
    with open(path) as f:
        return {k.rstrip(":"): int(v) for k, v, *_ in (ln.split(sep) for ln in f)}


class SystemMeter:
    """The machine while a variant runs: perf record -a (call graphs),
    tracepoint counts (perf stat -a), /proc/vmstat deltas and the peak of
    /proc/meminfo's Dirty and Writeback, polled every 0.1 s."""

    def __init__(self, out, b, daemon_is_client):
        self.out, self.pids = out, (b.mount.proc.pid, b.emu.proc.pid, daemon_is_client)
        self.rec = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-e", "cpu-clock",
                                     "-F", str(HZ), "-o", out], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        self.stat = subprocess.Popen(["perf", "stat", "-a", "-x", ",", "-o", out + ".stat",
                                      *sum((["-e", t] for t in TRACEPOINTS), [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached
        self.v0 = read_kv("/proc/vmstat")
        self.peak = {"Dirty": 0, "Writeback": 0}
        self.min_free = 1 << 62
        self.running = True
        self.poller = threading.Thread(target=self.poll)
        self.poller.start()

    def poll(self):
        while self.running:
            m = read_kv("/proc/meminfo")
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m[k])
            self.min_free = min(self.min_free, m["MemFree"])
            time.sleep(0.1)

    def stop(self, n):
        """Per-file figures: {"vm": {...}, "tp": {...}, "cpu": {group: {sym: ms}}}."""
        v1 = read_kv("/proc/vmstat")
        self.running = False
        self.poller.join()
        for p in (self.rec, self.stat):
            p.send_signal(2)
            p.wait(120)
        res = {"vm": {k: (v1.get(k, 0) - self.v0.get(k, 0)) / n for k in VMSTAT},
               "peak_kib": dict(self.peak, MemFree_min=self.min_free), "tp": {}}
        with open(self.out + ".stat") as f:
            for ln in f:
                x = ln.strip().split(",")
                if len(x) > 2 and x[0].isdigit():
                    res["tp"][x[2]] = int(x[0]) / n
        res["cpu"] = perf_split(self.out, n, *self.pids)
        return res


def task_tree(data):
    """From a perf record's task events: {tid: its process} and {process:
    parent process}."""
    out = subprocess.run(["perf", "script", "-i", data, "--show-task-events", "-F", "pid"],
                         capture_output=True, text=True).stdout
    tid_pid, parent = {}, {}
    for m in re.finditer(r"PERF_RECORD_FORK\((\d+):(\d+)\):\((\d+):\d+\)", out):
        pid, tid, ppid = int(m[1]), int(m[2]), int(m[3])
        tid_pid[tid] = pid
        if pid == tid:
            parent[pid] = ppid
    return tid_pid, parent


def perf_split(data, n, client, emulator, daemon_is_client):
    """Samples of a perf record -a in ms per file by symbol: "client" (the
    dicomfs daemon and this script's children: cp, curl, dicomfs wait; perf
    itself left out; the daemon counts only when daemon_is_client), "emulator";
    "by_name": the whole machine by process
    name (idle is swapper; other helpers' work shows under its own names).
    A user-space symbol is prefixed by its object's name."""
    tid_pid, parent = task_tree(data)
    me = os.getpid()

    def group(tid, comm):
        pid = tid_pid.get(tid, tid)
        if pid == emulator:
            return "emulator"
        if pid == client:
            return "client" if daemon_is_client else "dicomfs daemon"
        while pid in parent and pid != me:
            pid = parent[pid]
        return "client" if pid == me and comm != "perf" else None

    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                          "-n", "--sort", "pid,dso,sym", "-t", "\t"],
                         capture_output=True, text=True).stdout
    groups = {"client": {}, "emulator": {}, "dicomfs daemon": {}, "by_name": {}}
    for ln in rep.splitlines():
        x = ln.split("\t")
        if ln.startswith("#") or len(x) < 5 or not x[1].strip().isdigit():
            continue
        tid, _, comm = x[2].strip().partition(":")
        dso, sym = x[3].strip(), x[4].strip()
        ms = int(x[1]) / HZ / n * 1e3
        names = groups["by_name"]
        names[comm] = names.get(comm, 0) + ms
        g = group(int(tid), comm)
        if g:
            key = sym if dso == "[kernel.kallsyms]" else f"{dso}:{sym}"
            groups[g][key] = groups[g].get(key, 0) + ms
    return groups


def prefault(gib):
    """Touches gib GiB of fresh memory and frees it (a diagnostic: memory the
    VM handed back to its host is backed again, for a few seconds)."""
    if not gib:
        return
    zeros = bytes(256 << 20)
    held = []
    for _ in range(gib * 4):
        m = mmap.mmap(-1, len(zeros))
        m.write(zeros)
        held.append(m)
    for m in held:
        m.close()


def system_view(b, src, files, n, top, after_rm, gib=0):
    """Raw curl, then dicomfs's cp, each under a SystemMeter; after_rm: raw
    after a local copy of the files, dicomfs after a local copy and a copy
    with fsync per file (each removed at once), as in bench.py."""
    res = {"n": n}
    if after_rm:
        b.local_cp(src)
    bench.drop_caches()  # before the meter: raw_parallel's own then finds nothing to do
    m = SystemMeter(os.path.join(b.work, "raw.perf"), b, False)
    t = bench.timed(lambda: b.raw_parallel(files))
    res["raw"] = dict(m.stop(n), seconds=t, client_ms=b.cpu[0] / n * 1e3)
    b.clean()
    if after_rm:  # bench.py's CPU view: both local copies right before dicomfs
        b.local_cp(src)
        b.local_cp_fsync(src)
    meters = []

    def start():
        prefault(gib)
        meters.append(SystemMeter(os.path.join(b.work, "fs.perf"), b, True))

    _, t = b.dicomfs_cp(src, before=start)
    res["dicomfs"] = dict(meters[0].stop(n), seconds=t, client_ms=b.cpu[0] / n * 1e3)
    b.clean()
    for v in ("raw", "dicomfs"):
        print_variant(v, res[v], top)
    return res


def print_variant(name, r, top):
    grp = {g: sum(d.values()) for g, d in r["cpu"].items() if g != "by_name"}
    grp.update((k, v) for k, v in r["cpu"]["by_name"].items() if v >= 0.05)
    print(f"\n== {name}: {r['seconds']:.2f} s, client CPU {r['client_ms']:.3f} ms/file; "
          "perf ms/file by group: " + ", ".join(f"{g} {v:.3f}" for g, v in sorted(grp.items())))
    print("  vmstat per file: " + ", ".join(f"{k} {v:.2f}" for k, v in r["vm"].items() if v))
    print("  tracepoints per file: " + ", ".join(f"{k} {v:.3f}" for k, v in r["tp"].items()))
    print("  peak KiB: " + ", ".join(f"{k} {v}" for k, v in r["peak_kib"].items()))
    for g in ("client", "emulator"):
        rows = sorted(r["cpu"].get(g, {}).items(), key=lambda kv: -kv[1])[:top]
        print(f"  {g} top symbols, ms/file: " + "; ".join(f"{k} {v:.3f}" for k, v in rows))


def compare(a_path, b_path, top):
    """What grows: per-file figures of run B minus run A, largest first."""
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    print(f"N={a['n']} -> N={b['n']} (per file; B - A)")
    for v in ("raw", "dicomfs"):
        ra, rb = a[v], b[v]
        print(f"\n== {v}: client CPU {ra['client_ms']:.3f} -> {rb['client_ms']:.3f} ms/file")
        for g in ("client", "emulator", "by_name"):
            da, db = ra["cpu"].get(g, {}), rb["cpu"].get(g, {})
            print(f"  {g}: {sum(da.values()):.3f} -> {sum(db.values()):.3f} ms/file")
            rows = sorted(((k, da.get(k, 0), db.get(k, 0)) for k in set(da) | set(db)),
                          key=lambda x: x[1] - x[2])[:top]
            for k, x, y in rows:
                print(f"      {k:<48} {x:7.3f} -> {y:7.3f}  ({y - x:+.3f})")
        for sec in ("vm", "tp"):
            print(f"  {sec}: " + ", ".join(f"{k} {ra[sec].get(k, 0):.2f} -> {rb[sec].get(k, 0):.2f}"
                                           for k in rb[sec] if ra[sec].get(k) or rb[sec].get(k)))
        print("  peak KiB: " + ", ".join(f"{k} {ra['peak_kib'][k]} -> {rb['peak_kib'][k]}"
                                         for k in rb["peak_kib"]))


def cp_until_imported(b, src, wrap_dicomfs):
    """cp -r src into a new store's import/ and wait, dicomfs under perf or
    strace; returns (seconds, client CPU seconds, wrapper's output file)."""
    out = os.path.join(b.work, f"dicomfs-{time.monotonic_ns()}.{wrap_dicomfs[0]}")
    pid = str(b.mount.proc.pid)
    if wrap_dicomfs[0] == "perf":
        cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-o", out, "-p", pid]
    else:
        cmd = ["strace", "-c", "-f", "-o", out, "-p", pid]
    tracers = []

    def attach():
        tracers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # attached

    _, t = b.dicomfs_cp(src, before=attach)
    tracers[0].send_signal(2)
    tracers[0].wait(60)
    b.clean()
    return t, b.cpu, out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size-kib", type=int, default=512)
    p.add_argument("--uploads", type=int, default=16)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--system", action="store_true", help="the machine-wide view (see above)")
    p.add_argument("--after-rm", action="store_true",
                   help="--system: raw after a local copy, dicomfs after a local copy and one with "
                        "fsync per file (each removed), as bench.py runs them")
    p.add_argument("--prefault-gib", type=int, default=0,
                   help="--system: touch and free this much memory right before dicomfs's cp")
    p.add_argument("--save", help="--system: keep the figures in this JSON file")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare, args.top)
    build_dir = bench.build()
    work = tempfile.mkdtemp(prefix="dicomfs-profile.")
    args.repeat, args.studies = 1, 20
    b = None
    try:
        b = bench.Bench(args, build_dir, work)
        src = os.path.join(work, "data")
        files = bench.make_tree(src, args.n, args.size_kib * 1024, args.studies)
        if args.system:
            res = system_view(b, src, files, args.n, args.top, args.after_rm,
                              args.prefault_gib)
            if args.save:
                with open(args.save, "w") as f:
                    json.dump(res, f, indent=1)
            return 0
        raw_t = bench.timed(lambda: b.raw_parallel(files))
        b.clean()
        print(f"raw curl: {raw_t:.2f} s, client CPU {b.cpu[0] / args.n * 1e3:.3f} ms/file, "
              f"emulator {b.cpu[1] / args.n * 1e3:.3f} ms/file")
        for tool in ("perf", "strace"):
            t, cpu, out = cp_until_imported(b, src, [tool])
            print(f"\n== dicomfs under {tool}: {t:.2f} s, client CPU (cp + dicomfs) "
                  f"{cpu[0] / args.n * 1e3:.3f} ms/file, emulator {cpu[1] / args.n * 1e3:.3f}"
                  " ms/file")
            if tool == "perf":
                rep = subprocess.run(["perf", "report", "-i", out, "--stdio", "--no-children",
                                      "-g", "none", "--sort", "dso,sym", "--percent-limit", "0.7"],
                                     capture_output=True, text=True)
                lines = [ln for ln in rep.stdout.splitlines() if ln.strip() and
                         not ln.startswith("#")]
                print("\n".join(lines[:args.top]))
                rep = subprocess.run(["perf", "report", "-i", out, "--stdio", "--no-children",
                                      "-g", "none", "--sort", "comm"],
                                     capture_output=True, text=True)
                rep = subprocess.run(["perf", "report", "-i", out, "--stdio", "--children",
                                      "-g", "none", "--sort", "sym", "--percent-limit", "1.5"],
                                     capture_output=True, text=True)
                print("inclusive (children), system calls and dicomfs functions:")
                print("\n".join(ln for ln in rep.stdout.splitlines()
                                if "__x64_sys_" in ln or ("[.]" in ln and "0x0" not in ln))
                      [:args.top * 40])
                print("by thread name:")
                print("\n".join(ln for ln in rep.stdout.splitlines()
                                if ln.strip() and not ln.startswith("#")))
            else:
                with open(out) as f:
                    rows = f.read().splitlines()
                print(f"syscalls per file (strace -c -f, N={args.n}):")
                for ln in rows[2:]:
                    parts = ln.split()
                    if len(parts) >= 5 and parts[3].isdigit():
                        calls = int(parts[3])
                        print(f"  {parts[-1]:<20} {calls / args.n:8.2f}")
                    elif "total" in ln:
                        print("  total", ln.split()[3] if len(ln.split()) > 3 else ln)
    finally:
        if b:
            b.stop()
        if not os.environ.get("DICOMFS_PROFILE_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
