"""The benchmark harness (tests/bench/bench.py) runs end to end: a --smoke run
against the emulator with a real dicomfs mount writes results.md, results.json
and the PNG plot, and every measure in the table is a finite number. The smoke
run is too small to judge the targets; it checks the harness, not the speed.
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


def parse_table(text):
    """Rows of the first markdown table (measure | value | target | holds)."""
    rows = []
    lines = text.splitlines()
    start = lines.index("| measure | value | target | holds |")
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(cells)
    return rows


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
        png = os.path.join(res, "files_per_s.png")
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(png) > 1000

        with open(os.path.join(res, "results.md")) as f:
            rows = parse_table(f.read())
        names = [r[0] for r in rows]
        # Every measure of the issue is in the table: a, b (raw and rclone),
        # c, d, e, f (four listings) and g (per file for cp and until imported).
        for prefix, count in (("a.", 2), ("b.", 2), ("c.", 1), ("d.", 1), ("e.", 1),
                              ("f.", 4), ("g.", 2)):
            assert sum(n.startswith(prefix) for n in names) == count, names
        for name, value, target, holds in rows:
            v = float(value.rstrip("%"))
            assert math.isfinite(v), (name, value)
            assert holds in ("yes", "NO"), (name, holds)
            if not name.startswith("e."):
                assert v >= 0, (name, value)

        with open(os.path.join(res, "results.json")) as f:
            data = json.load(f)
        for r in data["by_n"]:
            for key in ("local_cp", "local_cp_fsync", "fs_cp", "fs_done", "raw", "rclone_copy",
                        "rclone_mount"):
                assert r[key] and all(math.isfinite(x) and x > 0 for x in r[key]), (r["n"], key)
            # The import is done after the copy returned.
            assert r["median"]["fs_done"] >= r["median"]["fs_cp"]
        ls = data["listings"]
        assert ls["ops_listed"] >= data["args"]["ops"]
        assert ls["pending_files"] == data["args"]["n"]
        assert data["peak_rss_kib"] > 0
    finally:
        shutil.rmtree(out, ignore_errors=True)
