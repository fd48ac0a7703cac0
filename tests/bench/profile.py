#!/usr/bin/python3
"""Where the client's CPU goes per file: perf (software clock sampling; this VM
has no hardware counters) and strace -c on dicomfs during `cp -r` of N files
into import/ until `dicomfs wait` returns, against the instant plain-http
emulator (the benchmark's CPU view). Prints per-file CPU, the top symbols and
the syscall counts per file; tests/bench/PROFILE.md records the results.

usage: tests/bench/profile.py [--n 1000] [--size-kib 512] [--uploads 16]
         [--top 25]   (DICOMFS_BENCH_BUILD=DIR measures another build)
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def cp_until_imported(b, src, wrap_dicomfs):
    """cp -r src into a new store's import/ and wait; returns (seconds,
    client CPU seconds, wrapper's output file)."""
    store, _ = b.fresh_store("prof", b.mount)
    out = os.path.join(b.work, f"{store}.{wrap_dicomfs[0]}")
    pid = str(b.mount.proc.pid)
    if wrap_dicomfs[0] == "perf":
        cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-o", out, "-p", pid]
    else:
        cmd = ["strace", "-c", "-f", "-o", out, "-p", pid]
    tracer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    meter = bench.CpuMeter(b.emu, b.mount)
    t0 = time.monotonic()
    bench.run(["cp", "-r", src, os.path.join(b.mount.store_dir(store), "import", "p")])
    if b.mount.wait(store) != 0:
        raise RuntimeError("dicomfs wait failed")
    t = time.monotonic() - t0
    cpu = meter.stop()
    tracer.send_signal(2)
    tracer.wait(60)
    return t, cpu, out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size-kib", type=int, default=512)
    p.add_argument("--uploads", type=int, default=16)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    build_dir = bench.build()
    work = tempfile.mkdtemp(prefix="dicomfs-profile.")
    args.repeat, args.studies = 1, 20
    b = None
    try:
        b = bench.Bench(args, build_dir, work)
        src = os.path.join(work, "data")
        files = bench.make_tree(src, args.n, args.size_kib * 1024, args.studies)
        raw_t = bench.timed(lambda: b.raw_parallel(files))
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
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
