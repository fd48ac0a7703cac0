"""Migrations of any size (issue 11): imports paced for long, limited
operations; a bounded cache with backpressure; import/ remembers what was
imported (rsync reruns copy nothing); files whose instance the store already
holds are reported present, not uploaded; a crash after spool space was
released loses nothing.

Every call into the mount goes through a subprocess with a timeout or a
helper of resilience_util that has one.
"""
import os
import subprocess
import time

import resilience_util as ru
from resilience_util import res_mounts, tmpfs_factory  # noqa: F401  (fixtures)


def import_ops(emu):
    return [n for n in ru.operations_list(emu)]


def wait_all(m, timeout=180):
    rc, out = m.wait(timeout=timeout)
    counts, failed = m.status()
    assert rc == 0, "dicomfs wait exited %r\n%s\nstatus=%r %r\nlog:\n%s" % (
        rc, out[-1500:], counts, failed, m.log_tail(80))
    assert not failed, failed
    return counts, out


def run(argv, timeout=120):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def test_trickle_with_slow_imports_starts_few_operations(emulator_factory, res_mounts,  # noqa: F811
                                                         tmp_path):
    """30 files copied 0.2 s apart (each gap longer than the 0.1 s quiet
    period) while each import takes 8 s (the issue's 0.4 s / 15 s scaled
    down, the copy shorter than one import): one operation for the first
    file, one for everything gathered while it ran, at most a third for the
    tail -- not one per pause (30 before pacing)."""
    emu = emulator_factory("--lro-delay", "8000")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 30, studies=2)
    m = res_mounts(emu, commit_delay=0.1)
    before = len(import_ops(emu))
    loop = ru.CopyLoop(src, sorted(files), m.import_dir, pause=0.2)
    loop.run()
    assert not loop.failed, loop.failed
    wait_all(m)
    started = len(import_ops(emu)) - before
    print("trickle: %d import operation(s) started" % started)
    assert 1 <= started <= 3, "%d import operations for a 30-file trickle\n%s" % (
        started, m.log_tail(60))
    found = ru.check_exactly_once(emu, list(files.values()))
    ru.assert_store_ok(found)
