"""The scale benchmark (tests/bench/scale.py) runs end to end in its --smoke
variant: a mount whose index is filled directly with 2000 remembered rows
lists every one of a folder's 500 rows (readdir and lstat served from the
index), and the copy part imports every file (`dicomfs wait` exits 0). The
figures are printed, not judged: the smoke run is too small to say anything
about speed.
"""
import json
import math
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
SCALE = os.path.join(TOP, "tests", "bench", "scale.py")


def test_scale_smoke_lists_indexed_rows_and_imports():
    env = dict(os.environ)
    if os.environ.get("DICOMFS_BUILD"):
        env.setdefault("DICOMFS_BENCH_BUILD", os.environ["DICOMFS_BUILD"])
    p = subprocess.run(["/usr/bin/python3", SCALE, "--smoke"], capture_output=True, text=True,
                       timeout=600, cwd=TOP, env=env)
    assert p.returncode == 0, "scale --smoke exited %d\n%s\n%s" % (
        p.returncode, p.stdout[-3000:], p.stderr[-3000:])
    res = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            _, part, data = line.split(" ", 2)
            res[part] = json.loads(data)
    a, b = res["a"], res["b"]
    assert a["remembered"] == 2000 and a["last_folder_entries"] == 500, a
    for k in ("rss_after_mount_mib", "rss_after_ls_mib", "ls_l_first_s", "ls_l_second_s"):
        assert math.isfinite(a[k]) and a[k] > 0, (k, a)
    assert [r["n"] for r in b] == [100, 300], b
    for r in b:
        assert math.isfinite(r["cp_ms_per_file"]) and r["done_s"] >= r["cp_s"] > 0, r
