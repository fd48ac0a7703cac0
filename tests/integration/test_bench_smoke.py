"""The benchmark harness (tests/bench/bench.py) runs end to end: a --smoke run
of both profiles (the cloud profile: realistic timing, latency, a bandwidth cap,
https with the emulator's throwaway CA; the CPU view: instant, plain http)
against real dicomfs mounts writes results.md, results.json and the PNG plots,
and every measure in the tables is a finite number. The smoke run is too small
to judge the targets; it checks the harness, not the speed.
"""
import json
import math
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
BENCH = os.path.join(TOP, "tests", "bench", "bench.py")


def parse_tables(text):
    """{section title: rows of its markdown table (measure | value | target | holds)}."""
    tables, section = {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            section = line[3:]
        if line == "| measure | value | target | holds |":
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            tables[section] = rows
    return tables


def test_bench_smoke_writes_finite_results():
    out = tempfile.mkdtemp(prefix="dicomfs-bench-smoke.")
    try:
        env = dict(os.environ)
        # Under tests/run.sh the sanitizer build exists already: measure it
        # rather than compiling a release build for a run whose numbers are
        # not judged (bench.py alone builds build-release/).
        if os.environ.get("DICOMFS_BUILD"):
            env.setdefault("DICOMFS_BENCH_BUILD", os.environ["DICOMFS_BUILD"])
        p = subprocess.run(["/usr/bin/python3", BENCH, "--smoke", "--out", out],
                           capture_output=True, text=True, timeout=900, cwd=TOP, env=env)
        assert p.returncode == 0, "bench --smoke exited %d\n%s\n%s" % (
            p.returncode, p.stdout[-3000:], p.stderr[-5000:])
        runs = os.listdir(out)
        assert len(runs) == 1, runs
        res = os.path.join(out, runs[0])
        for name in ("files_per_s.png", "files_per_s_cloud.png"):
            png = os.path.join(res, name)
            with open(png, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
            assert os.path.getsize(png) > 1000

        with open(os.path.join(res, "results.md")) as f:
            tables = parse_tables(f.read())
        assert set(tables) == {"Cloud profile", "CPU view"}, list(tables)
        # Every measure of the issue is in its profile's table. Cloud: b (raw
        # and rclone, for the main and the small-file workload), d, e, g (time
        # until imported). CPU view: a (copy, fsync'ed copy, CPU per file vs
        # curl), b and c (information), d, e, f (four listings), g (cp time
        # and CPU per file).
        expect = {"Cloud profile": (("b.", 4), ("d.", 1), ("e.", 1), ("g.", 1)),
                  "CPU view": (("a.", 3), ("b.", 2), ("c.", 1), ("d.", 1), ("e.", 1),
                               ("f.", 4), ("g.", 2))}
        for section, counts in expect.items():
            names = [r[0] for r in tables[section]]
            for prefix, count in counts:
                assert sum(n.startswith(prefix) for n in names) == count, (section, names)
            for name, value, target, holds in tables[section]:
                v = float(value.rstrip("%"))
                assert math.isfinite(v), (name, value)
                assert holds in ("yes", "NO"), (name, holds)
                if not name.startswith("e."):
                    assert v >= 0, (name, value)

        with open(os.path.join(res, "results.json")) as f:
            data = json.load(f)
        cpu, cloud = data["profiles"]["cpu"], data["profiles"]["cloud"]
        for prof, keys in ((cpu, ("local_cp", "local_cp_fsync", "fs_cp", "fs_done", "raw",
                                  "rclone_copy", "rclone_mount")),
                           (cloud, ("fs_cp", "fs_done", "raw", "rclone_copy"))):
            for r in prof["by_n"] + ([prof["small"]] if "small" in prof else []):
                for key in keys:
                    assert r[key] and all(math.isfinite(x) and x > 0 for x in r[key]), \
                        (r["n"], key)
                # The import is done after the copy returned.
                assert r["median"]["fs_done"] >= r["median"]["fs_cp"]
            assert prof["peak_rss_kib"] > 0
        assert cloud["small"]["n"] == data["args"]["small_n"]
        assert "--tls-dir" in cloud["emulator_flags"]
        ls = cpu["listings"]
        assert ls["ops_listed"] >= data["args"]["ops"]
        assert ls["pending_files"] == data["args"]["n"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
