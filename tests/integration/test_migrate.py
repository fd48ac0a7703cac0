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
    """Operations of the dataset (only dicomfs's imports in these tests)."""
    return ru.operations_list(emu)


def wait_all(m, timeout=180):
    rc, out = m.wait(timeout=timeout)
    assert m.alive(), "dicomfs died:\n" + m.log_tail(60)
    counts, failed = m.status()
    assert rc == 0, "dicomfs wait exited %r\n%s\nstatus=%r %r\nlog:\n%s" % (
        rc, out[-1500:], counts, failed, m.log_tail(80))
    assert not failed, failed
    return counts, out


def run(argv, timeout=120):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


xattr_state = ru.file_state


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


def test_copy_many_times_the_cache_size(emulator_factory, res_mounts, tmpfs_factory,  # noqa: F811
                                        tmp_path):
    """A cache on a 16 MiB tmpfs (cache_max defaults to half its free space)
    and a 48 MiB copy: writers wait while the spool is full, spool space is
    released once each staged object is verified, cp exits 0 and every file
    is imported. Today's main refused about half the files with ENOSPC."""
    emu = emulator_factory()
    fs = tmpfs_factory("16m")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 96, studies=3, rows=724, cols=724)  # ~512 KiB each
    total = sum(os.path.getsize(os.path.join(src, r)) for r in files)
    assert total > 3 * (16 << 20)
    m = res_mounts(emu, cache_dir=os.path.join(fs.dir, "cache"), commit_delay=0.2, uploads=4)
    counts, _ = m.status()
    assert 0 < counts["cache_max"] <= 8 << 20, counts
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, "cp -r through a 16 MiB cache: %s\n%s" % (err[-800:], m.log_tail(40))
    counts, _ = wait_all(m)
    assert counts["imported"] == len(files), counts
    assert counts["cache_used"] <= counts["cache_max"], counts
    found = ru.check_exactly_once(emu, list(files.values()))
    ru.assert_store_ok(found)


def test_rsync_rerun_after_import_transfers_nothing(emulator_factory, res_mounts,  # noqa: F811
                                                    tmp_path):
    """import/ remembers: imported files stay listed with their size, mtime
    and mode, so a second `rsync -a` transfers 0 files and nothing is
    uploaded again; their state is in user.dicomfs.state; reading one
    returns its bytes (fetched back: the cache no longer holds them); rm
    forgets locally and deletes nothing in the store."""
    emu = emulator_factory()
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 24, studies=2)
    m = res_mounts(emu, commit_delay=0.2)
    rc, out, err = run(["rsync", "-a", src + "/", m.import_dir + "/"])
    assert rc == 0, err + m.log_tail(60)
    wait_all(m)
    ops = len(import_ops(emu))
    rc, out, err = run(["rsync", "-a", "--stats", src + "/", m.import_dir + "/"])
    assert rc == 0, err
    assert "Number of regular files transferred: 0" in out, out
    rel = sorted(files)[0]
    path = os.path.join(m.import_dir, rel)
    st_src, st_dst = os.stat(os.path.join(src, rel)), os.stat(path)
    assert (st_dst.st_size, int(st_dst.st_mtime), st_dst.st_mode) == (
        st_src.st_size, int(st_src.st_mtime), st_src.st_mode)
    assert xattr_state(path) == "imported"
    rc, out, err = run(["cmp", os.path.join(src, rel), path])
    assert rc == 0, (out, err, m.log_tail(20))
    rc, out, err = run(["rm", path])
    assert rc == 0, err
    assert not os.path.exists(path)
    # Remembered files are part of the namespace: a folder of them can be
    # renamed, and is not empty for rmdir.
    top = rel.split("/")[0]
    rc, out, err = run(["rmdir", os.path.join(m.import_dir, top)])
    assert rc != 0 and "not empty" in err, (rc, err)
    rc, out, err = run(["mv", os.path.join(m.import_dir, top),
                        os.path.join(m.import_dir, "renamed")])
    assert rc == 0, err
    moved = [r for r in files if r.startswith(top + "/") and r != rel]
    for r in moved:
        p = os.path.join(m.import_dir, "renamed", r[len(top) + 1:])
        assert xattr_state(p) == "imported", p
    time.sleep(1)
    assert len(import_ops(emu)) == ops, "the rerun started an import"
    found = ru.check_exactly_once(emu, list(files.values()))
    ru.assert_store_ok(found)


def test_crash_after_spool_space_released(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    """Imports are slow (6 s); the files are uploaded and their spool space
    released (the staged objects are the copies of record); dicomfs is
    killed with SIGKILL; after the remount every file is imported from the
    staged objects, none uploaded again from a spool that no longer holds
    it."""
    emu = emulator_factory("--lro-delay", "6000")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 40, studies=2)
    m = res_mounts(emu, commit_delay=0.2)
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err

    def released():
        c, _ = m.status()
        return c.get("importing", 0) + c.get("uploaded", 0) == len(files) and \
            c.get("cache_used", 1) == 0

    assert ru.wait_until(released, 60), (m.status(), m.log_tail(40))
    m.kill9()
    m.remount()
    wait_all(m, timeout=120)
    found = ru.check_exactly_once(emu, list(files.values()))
    ru.assert_store_ok(found)
    listed = sorted(os.path.relpath(os.path.join(d, f), m.import_dir)
                    for d, _, fs in os.walk(m.import_dir) for f in fs)
    assert listed == sorted(files), listed[:5]


def test_present_files_are_not_uploaded(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    """A file whose SOP Instance UID the store already holds is reported
    present, not uploaded: a corrected file that kept its UID (known at its
    close(): the remembered file has it), then a whole tree copied again
    through a fresh cache (known from one search per study). `dicomfs wait`
    says how many and exits 0; no import operation starts for them.
    upload_present uploads anyway."""
    emu = emulator_factory()
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 12, studies=2)
    m = res_mounts(emu, commit_delay=0.2)
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err
    wait_all(m)
    ops = len(import_ops(emu))
    rel = sorted(files)[0]
    fixed = str(tmp_path / "fixed.dcm")
    ru.write_instance(fixed, files.study[rel], files.series[rel], files[rel],
                      patient="CORRECTED^NAME", rows=10, cols=10)
    rc, out, err = run(["cp", fixed, os.path.join(m.import_dir, "fixed.dcm")])
    assert rc == 0, err
    counts, out = wait_all(m)
    assert counts["present"] == 1, counts
    assert "1 present (the store keeps its copy)" in out, out
    assert xattr_state(os.path.join(m.import_dir, "fixed.dcm")) == "present"
    m.unmount()

    m2 = res_mounts(emu, commit_delay=0.2)  # a fresh cache: nothing remembered
    rc, err = ru.cp_r(src, m2.import_dir)
    assert rc == 0, err
    counts, out = wait_all(m2)
    assert counts["present"] == len(files) and counts["imported"] == 0, counts
    assert "%d present (the store keeps its copy)" % len(files) in out, out
    assert xattr_state(os.path.join(m2.import_dir, rel)) == "present"
    assert len(import_ops(emu)) == ops, "an import started for files already stored"
    m2.unmount()

    m3 = res_mounts(emu, commit_delay=0.2, extra_opts=["upload_present"])
    rc, out, err = run(["cp", os.path.join(src, rel), os.path.join(m3.import_dir, "again.dcm")])
    assert rc == 0, err
    counts, out = wait_all(m3)
    assert counts["imported"] == 1 and counts["present"] == 0, counts
    found = ru.check_exactly_once(emu, list(files.values()))
    ru.assert_store_ok(found)


def test_import_start_refused_429_waits(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    """The project's running-operation cap is taken (an export of another
    store runs for 4 s, --max-running-ops 1): the import start answered 429
    RESOURCE_EXHAUSTED waits and is retried; no file fails, all imported."""
    import json
    emu = emulator_factory("--max-running-ops", "1", "--lro-delay", "4000")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 6, studies=1)
    m = res_mounts(emu, commit_delay=0.2)
    st, _, body = emu.request("POST", "/v1/%s/dicomStores?dicomStoreId=other" % ru.DATASET_NAME,
                              body=b"{}", headers={"Content-Type": "application/json"})
    assert st == 200, body
    st, _, body = emu.request(
        "POST", "/v1/%s/dicomStores/other:export" % ru.DATASET_NAME,
        body=json.dumps({"gcsDestination": {"uriPrefix": "gs://%s/other-export" % ru.BUCKET}})
        .encode(), headers={"Content-Type": "application/json"})
    assert st == 200, body
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err
    counts, _ = wait_all(m, timeout=120)
    assert counts["imported"] == len(files) and counts["failed"] == 0, counts
    assert "429" in m.log(), "the cap was never hit:\n" + m.log_tail(30)
    found = ru.check_exactly_once(emu, list(files.values()))
    ru.assert_store_ok(found)


def test_writer_waiting_for_cache_room_is_interruptible(emulator_factory,  # noqa: F811
                                                        res_mounts, tmp_path):
    """Uploads keep failing (transient 5xx/429), so spooled files cannot be
    released and a cp into a 1 MiB cache waits for room; SIGINT ends that cp
    at once (FUSE interrupt -> EINTR) instead of leaving it stuck until
    space frees. Status shows the waiting writer. Once the server recovers,
    the files accepted before are imported."""
    import signal
    emu = emulator_factory("--fault-paths", "/upload/", "--fail-rate", "1.0")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 6, studies=1, rows=724, cols=724)  # ~512 KiB each
    m = res_mounts(emu, commit_delay=0.2, extra_opts=["cache_max=1M"])
    p = subprocess.Popen(["cp", "-r", src + "/.", m.import_dir], stderr=subprocess.PIPE)
    try:
        def waiting():
            c, _ = m.status()
            return c.get("writers_waiting", 0) > 0

        assert ru.wait_until(waiting, 60), (m.status(), m.log_tail(30))
        assert p.poll() is None, "cp ended although the cache was full"
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        p.wait(timeout=15)
        assert time.monotonic() - t0 < 10
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode != 0
    assert m.alive(), m.log_tail(30)
    ru.faults_off(emu)
    counts, _ = wait_all(m, timeout=120)
    assert counts["imported"] >= 1, counts


def index_rows(cache_dir):
    """Rows of dicomfs's index of remembered files (read-only, a second
    SQLite connection: WAL lets it read while dicomfs writes)."""
    import sqlite3
    db = sqlite3.connect("file:%s/index.sqlite?mode=ro" % cache_dir, uri=True, timeout=10)
    try:
        return sorted((p + "/" + n if p else n, s) for p, n, s in
                      db.execute("SELECT parent, name, state FROM files"))
    finally:
        db.close()


def journal_file_records(cache_dir):
    """How many file records ("e/ID") the journal holds after a clean
    unmount (which compacts it: the log is empty, the snapshot's keys are
    plain text)."""
    n = 0
    for name in ("snapshot", "log"):
        p = os.path.join(cache_dir, "journal", name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                n += f.read().count(b"e/")
    return n


def test_remembered_files_live_in_the_index(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    """Imported files leave memory and the journal for the SQLite index
    (cache_dir/index.sqlite): one row each; after a remount they are listed
    from it (rsync rerun transfers 0), rm deletes the row, rewriting one
    makes it a new file that leaves the index until it is imported again."""
    emu = emulator_factory()
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 20, studies=2)
    m = res_mounts(emu, commit_delay=0.2)
    rc, out, err = run(["rsync", "-a", src + "/", m.import_dir + "/"])
    assert rc == 0, err + m.log_tail(60)
    wait_all(m)
    assert ru.wait_until(lambda: len(index_rows(m.cache_dir)) == len(files), 30), \
        (index_rows(m.cache_dir), m.log_tail(40))
    assert [p for p, _ in index_rows(m.cache_dir)] == sorted(files)
    rc = m.unmount()
    assert rc == 0
    assert journal_file_records(m.cache_dir) == 0, "the journal still holds remembered files"
    m.remount()
    rc, out, err = run(["rsync", "-a", "--stats", src + "/", m.import_dir + "/"])
    assert rc == 0, err
    assert "Number of regular files transferred: 0" in out, out
    first, second = sorted(files)[:2]
    assert xattr_state(os.path.join(m.import_dir, first)) == "imported"
    rc, out, err = run(["rm", os.path.join(m.import_dir, first)])
    assert rc == 0, err
    assert first not in [p for p, _ in index_rows(m.cache_dir)]
    assert not os.path.exists(os.path.join(m.import_dir, first))
    # A whole rewrite (cp of the same bytes): a new file, present in the
    # store already; it is remembered again once settled.
    rc, out, err = run(["cp", os.path.join(src, second), os.path.join(m.import_dir, second)])
    assert rc == 0, err + m.log_tail(20)
    wait_all(m)
    assert xattr_state(os.path.join(m.import_dir, second)) in ("present", "imported")
    assert ru.wait_until(lambda: second in [p for p, _ in index_rows(m.cache_dir)], 30)
    assert len(index_rows(m.cache_dir)) == len(files) - 1
