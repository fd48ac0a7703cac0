"""Long variant of test_migrate (DICOMFS_LONG=1): the issue's "done when"
copy -- 2 GiB of 512 KiB files through a 256 MiB cache (a 320 MiB tmpfs
with cache_max=256M) against the emulator's realistic profile (imports take
20 s plus 50 ms per instance and 20 ms per MiB, at most 10 running
operations per project, 30 ms latency, 1000 Mbps shared). cp must exit 0,
every file must be imported exactly once, and the figures are printed.
DICOMFS_LONG_MIGRATE_MIB sets the size (default 2048)."""
import os
import time

import resilience_util as ru
from resilience_util import res_mounts, tmpfs_factory  # noqa: F401  (fixtures)

MIB = int(os.environ.get("DICOMFS_LONG_MIGRATE_MIB", "2048"))


def test_long_copy_through_small_cache_realistic(emulator_factory, res_mounts,  # noqa: F811
                                                 tmpfs_factory, tmp_path):
    emu = emulator_factory("--profile", "realistic")
    fs = tmpfs_factory("320m")
    src = str(tmp_path / "src")
    n = MIB * 2  # 512 KiB each
    files = ru.make_tree(src, n, studies=8, rows=724, cols=724)
    total = sum(os.path.getsize(os.path.join(src, r)) for r in files)
    m = res_mounts(emu, cache_dir=os.path.join(fs.dir, "cache"), commit_delay=0.2,
                   extra_opts=["cache_max=256M"])
    ops_before = len(ru.operations_list(emu))
    waits = []
    t0 = time.monotonic()
    cp = ru.subprocess.Popen(["cp", "-r", src + "/.", m.import_dir], stderr=ru.subprocess.PIPE)
    first_op_at = None
    while cp.poll() is None:
        c, _ = m.status()
        waits.append(c.get("writers_waiting", 0))
        if first_op_at is None and len(ru.operations_list(emu)) > ops_before:
            first_op_at = time.monotonic() - t0
        time.sleep(1)
    err = cp.stderr.read().decode(errors="replace")
    t_cp = time.monotonic() - t0
    assert cp.returncode == 0, "cp: %s\n%s" % (err[-1000:], m.log_tail(40))
    rc, out = m.wait(timeout=3600)
    t_all = time.monotonic() - t0
    counts, failed = m.status()
    ops = len(ru.operations_list(emu)) - ops_before
    print("\nmigrate-2GiB: %d files, %.0f MiB, cp %.0f s, all imported %.0f s, %d import "
          "operation(s), first started at %s s (copy running: %s), writers waited in %d of %d "
          "samples, final status %r" % (
              n, total / 2**20, t_cp, t_all, ops,
              "%.0f" % first_op_at if first_op_at is not None else "-",
              first_op_at is not None, sum(1 for w in waits if w), len(waits), counts))
    assert rc == 0, (out[-1500:], m.log_tail(60))
    assert not failed, failed
    assert counts["imported"] == n, counts
    found = ru.check_exactly_once(emu, list(files.values()))
    ru.assert_store_ok(found)
