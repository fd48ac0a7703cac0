"""Suite 2, crash: SIGKILL the daemon (by PID) while files are being copied
in, while they are being uploaded, while their import operation runs, and
over and over in a tight loop of small copies (kills land in journal
updates). After each kill: `fusermount3 -uz`, remount with the same
cache_dir, and check that every file whose `cp` returned 0 is in the store
exactly once (QIDO-RS straight from the emulator).

Copies are individual `cp` processes so that we know exactly which files
were accepted (exit 0) before the kill.
"""
import os
import random
import subprocess
import time

import resilience_util as ru
from resilience_util import res_mounts  # noqa: F401  (fixture)

SEED = int(os.environ.get("DICOMFS_SEED", "11"))


def recopy(src, rels, import_dir):
    """Copies again the files whose copy did not return 0. A file interrupted
    by the kill may have been accepted just before it (its journal record
    made it, cp never heard back): if its import already started, copying
    over it gives EBUSY, and it must then be in the store like any accepted
    file. Returns (accepted now, busy); any other failure fails the test."""
    loop = ru.CopyLoop(src, rels, import_dir, max_failures=len(rels) + 1)
    loop.run()
    busy = [f[0] for f in loop.failed if "Device or resource busy" in f[2]]
    other = [f for f in loop.failed if "Device or resource busy" not in f[2]]
    assert other == [], "copies after the remount failed: %r" % other[:3]
    return loop.accepted, busy


def finish_and_check(emu, m, files, accepted, suite, record_property, extra):
    """Remounted m: wait for every pending import, then compare the store with
    the accepted files. Returns the figures."""
    wrc, wout = m.wait(timeout=300)
    counts, failed = m.status()
    found = ru.try_check_exactly_once(emu, [files[r] for r in accepted],
                                      allowed_uids=files.values())
    figures = dict(files=len(files), accepted=len(accepted), kills=m.kills,
                   files_lost=ru.n_or_none(found["missing"]),
                   duplicates=ru.n_or_none(found["duplicates"]),
                   stray=ru.n_or_none(found["stray"]), stored=found["stored"])
    figures.update(extra)
    ru.record_figures(suite, record_property, **figures)
    assert wrc == 0, "dicomfs wait exited %r after remount\n%s\nstatus=%r %r\nlog:\n%s" % (
        wrc, wout[-1500:], counts, failed, m.log_tail(80))
    ru.assert_store_ok(found, "accepted")
    return figures


def run_kill_during_cp(emulator, res_mounts, tmp_path, n_files, record_property=None):  # noqa: F811
    src = str(tmp_path / "src")
    files = ru.make_tree(src, n_files, studies=5)
    m = res_mounts(emulator, commit_delay=1)
    loop = ru.CopyLoop(src, files, m.import_dir)
    loop.start()
    third = n_files // 3
    assert ru.wait_until(lambda: loop.n_accepted() >= third or not loop.is_alive(), 240), \
        "copying stalled at %d files\n%s" % (loop.n_accepted(), m.log_tail())
    assert loop.n_accepted() >= third, "copies failed before the kill: %r\n%s" % (
        loop.failed[:3], m.log_tail())
    at_kill = loop.n_accepted()
    m.kill9(before_unmount=lambda: (loop.stop(), loop.join(120)))
    assert not loop.is_alive(), "cp processes hung after the daemon was killed"
    accepted = list(loop.accepted)
    interrupted = [f[0] for f in loop.failed]

    ok, msg = m.try_start()
    assert ok, "remount after SIGKILL failed (journal did not load?):\n" + msg
    # Copy everything that was not accepted again: now every file must land.
    rest = [r for r in files if r not in set(accepted)]
    again, busy = recopy(src, rest, m.import_dir)
    return finish_and_check(emulator, m, files, accepted + again + busy, "crash-during-cp",
                            record_property, dict(accepted_before_kill=at_kill,
                                                  interrupted_copies=len(interrupted),
                                                  recopy_busy=len(busy)))


def test_kill_during_cp(emulator, res_mounts, tmp_path):  # noqa: F811
    run_kill_during_cp(emulator, res_mounts, tmp_path, 300, None)


def test_kill_during_uploads(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    # Slow uploads (latency on upload requests only) and a long quiet period:
    # the kill lands while some files are uploaded and others are not.
    emu, m, files, status_at_kill = ru.copy_and_catch_mid_upload(
        emulator_factory, res_mounts, str(tmp_path / "src"), commit_delay=60)
    m.kill9()
    ok, msg = m.try_start(commit_delay=1)
    assert ok, "remount after SIGKILL failed:\n" + msg
    finish_and_check(emu, m, files, list(files), "crash-during-uploads", None,
                     dict(status_at_kill=status_at_kill))


def test_kill_during_import_operation(emulator_factory, res_mounts, tmp_path):
    emu = emulator_factory("--lro-delay", "8000")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 120, studies=3)
    m = res_mounts(emu, commit_delay=1)
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err
    ops_dir = os.path.join(m.store_dir, "operations")
    seen = {}

    def importing():
        c, _ = m.status()
        seen.update(c)
        return c.get("importing", 0) > 0 and len(os.listdir(ops_dir)) > 0

    assert ru.wait_until(importing, 120), "no import operation started: %r\n%s" % (
        seen, m.log_tail())
    ops_before = set(os.listdir(ops_dir))
    emu_ops_at_kill = len(ru.operations_list(emu))
    m.kill9()
    ok, msg = m.try_start(commit_delay=1)
    assert ok, "remount after SIGKILL failed:\n" + msg
    # The operation started before the crash is still listed (journal).
    assert ops_before <= set(os.listdir(ops_dir)), (ops_before, os.listdir(ops_dir))
    finish_and_check(emu, m, files, list(files), "crash-during-import", None,
                     dict(status_at_kill=dict(seen), emulator_ops_at_kill=emu_ops_at_kill,
                          emulator_ops_after=len(ru.operations_list(emu))))


def run_kill_loop(emulator, res_mounts, tmp_path, rounds, per_round,  # noqa: F811
                  record_property=None):
    """Tight loops of small cp's, killed at a random moment, `rounds` times:
    each remount must load the journal; in the end every accepted file is
    imported exactly once (files whose copy failed are copied again)."""
    rnd = random.Random(SEED)
    src = str(tmp_path / "src")
    files = ru.make_tree(src, rounds * per_round, studies=4)
    rels = list(files)
    m = res_mounts(emulator, commit_delay=0.5)
    accepted, interrupted = [], []
    remount_failures = []
    for i in range(rounds):
        chunk = rels[i * per_round:(i + 1) * per_round]
        loop = ru.CopyLoop(src, chunk, m.import_dir)
        loop.start()
        ru.wait_until(lambda: loop.n_accepted() >= 1 or not loop.is_alive(), 60)
        time.sleep(rnd.uniform(0.05, 1.0))
        m.kill9(before_unmount=lambda: (loop.stop(), loop.join(120)))
        assert not loop.is_alive(), "cp hung after the kill"
        accepted += loop.accepted
        interrupted += [f[0] for f in loop.failed]
        ok, msg = m.try_start()
        if not ok:
            remount_failures.append((i, msg))
            break
    assert remount_failures == [], "the journal did not load after a kill: %s" % (
        remount_failures[0][1],)
    bad_tails = [f for f in os.listdir(os.path.join(m.cache_dir, "journal"))
                 if f.startswith("log.bad")] if os.path.isdir(
                     os.path.join(m.cache_dir, "journal")) else []
    rest = [r for r in rels if r not in set(accepted)]
    again, busy = recopy(src, rest, m.import_dir)
    return finish_and_check(emulator, m, files, accepted + again + busy, "crash-kill-loop",
                            record_property,
                            dict(rounds=rounds, accepted_before_kills=len(accepted),
                                 interrupted_copies=len(interrupted), recopy_busy=len(busy),
                                 torn_journal_tails=len(bad_tails)))


def test_kill_loop_journal_loads(emulator, res_mounts, tmp_path):  # noqa: F811
    run_kill_loop(emulator, res_mounts, tmp_path, rounds=6, per_round=40,
                  record_property=None)


def test_torn_journal_tail_loads(emulator, res_mounts, tmp_path):  # noqa: F811
    """What a kill in the middle of a journal append leaves: a partial record
    at the end of cache_dir/journal/log (see fs/journal.c). Made here on
    purpose, after a SIGKILL, in three shapes: a short header, a record whose
    length runs past the end, and a full-length record with a bad CRC. Each
    time the remount must load the journal, keep every complete record, and
    import every accepted file once."""
    import struct
    import zlib
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 60, studies=2)
    rels = list(files)
    m = res_mounts(emulator, commit_delay=600)  # nothing imported before the last remount
    log_path = os.path.join(m.cache_dir, "journal", "log")
    payload = b"P" + struct.pack("<I", 6) + b"e/torn" + b"x" * 40
    tails = [
        ("short header", b"\x30\x00"),
        ("length past the end", struct.pack("<II", 4096, zlib.crc32(payload)) + payload[:20]),
        ("bad crc", struct.pack("<II", len(payload), zlib.crc32(payload) ^ 1) + payload),
    ]
    accepted = []
    for i, (label, tail) in enumerate(tails):
        loop = ru.CopyLoop(src, rels[i * 20:(i + 1) * 20], m.import_dir)
        loop.run()
        assert loop.failed == [], loop.failed[:3]
        accepted += loop.accepted
        m.kill9()
        assert os.path.exists(log_path), "no journal log at %s" % log_path
        with open(log_path, "ab") as f:
            f.write(tail)
        ok, msg = m.try_start(commit_delay=600 if i < len(tails) - 1 else 1)
        assert ok, "the journal with a torn tail (%s) did not load:\n%s" % (label, msg)
    kept = [f for f in os.listdir(os.path.dirname(log_path)) if f.startswith("log.bad")]
    finish_and_check(emulator, m, files, accepted, "torn-journal-tail", None,
                     dict(torn_tails=len(tails), bad_tails_kept=len(kept)))


def cp(path, dst):
    return subprocess.run(["cp", str(path), dst], capture_output=True, text=True, timeout=60)


def instance_bytes(emu, study, series, sop):
    """The instance as the store holds it (WADO-RS, single part, as stored)."""
    path = "/v1/%s/dicomWeb/studies/%s/series/%s/instances/%s" % (ru.STORE_NAME, study, series, sop)
    status, _, body = ru._request(emu, "GET", path,
                                  headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert status == 200, (status, body[:300])
    return body


def test_short_file_over_recycled_spool_file_survives_kill(emulator_factory, res_mounts,  # noqa: F811
                                                          tmp_path):
    """A released spool file keeps its bytes for the next file to write over
    (fs/spool.c): a short file spooled into the inode of a longer one must be
    uploaded with exactly its own bytes, also when dicomfs is killed between
    its close() and its upload and the upload happens after the remount. A
    file written with a gap, or grown by truncate, over another recycled one
    reads zeros there, never the earlier file's bytes."""
    emu = emulator_factory("--fault-paths", "/upload/")
    src = tmp_path / "src"
    study, series = ru._uid(), ru._uid()
    long_sop, long2_sop, short_sop = ru._uid(), ru._uid(), ru._uid()
    ru.write_instance(str(src / "long.dcm"), study, series, long_sop, rows=256, cols=256)
    ru.write_instance(str(src / "long2.dcm"), study, series, long2_sop, rows=256, cols=256,
                      number=3)
    ru.write_instance(str(src / "short.dcm"), study, series, short_sop, number=2)
    long_b = (src / "long.dcm").read_bytes()
    short_b = (src / "short.dcm").read_bytes()
    assert len(long_b) > len(short_b) + 60000
    m = res_mounts(emu, commit_delay=1, uploads=1)
    pool = os.path.join(m.cache_dir, "spool-pool")
    spool = os.path.join(m.cache_dir, "spool")

    def recycled():  # the long files' spool files, back in the pool with their bytes
        sts = [os.stat(os.path.join(pool, name)) for name in os.listdir(pool)]
        return {st.st_ino for st in sts if st.st_size == len(long_b)}

    for name in ("long.dcm", "long2.dcm"):
        r = cp(src / name, m.import_dir)
        assert r.returncode == 0, r.stderr
    assert ru.wait_until(lambda: len(recycled()) == 2, 60), \
        "the long files' spool files never came back to the pool\n" + m.log_tail()
    inos = recycled()
    assert m.wait()[0] == 0
    # Uploads now take 8 s: the short file stays spooled until the kill
    # (checked below; short enough for the emulator to stop cleanly).
    ru.set_faults(emu, latency_ms=8000)
    r = cp(src / "short.dcm", m.import_dir)
    assert r.returncode == 0, r.stderr
    spooled = {os.stat(os.path.join(spool, n)).st_ino: os.stat(os.path.join(spool, n)).st_size
               for n in os.listdir(spool)}
    # It went into a recycled inode, cut to its own size at close().
    assert len(spooled) == 1 and set(spooled) <= inos, (spooled, inos)
    assert list(spooled.values()) == [len(short_b)]
    r = subprocess.run(["cat", os.path.join(m.import_dir, "short.dcm")], capture_output=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout == short_b  # read back through the mount
    # The other recycled file: written with a gap, then grown by truncate,
    # read back before close() (then rejected: not DICOM).
    script = """if True:
        import os, sys
        fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        os.pwrite(fd, b"A" * 10, 0)
        assert os.pread(fd, 100000, 0) == b"A" * 10, "read past the end"
        os.pwrite(fd, b"B", 30000)
        os.ftruncate(fd, 60000)
        data = os.pread(fd, 300000, 0)
        sys.stdout.buffer.write(data)
        try:
            os.close(fd)  # EINVAL: not DICOM, rejected
        except OSError:
            pass
    """
    r = subprocess.run(["/usr/bin/python3", "-c", script, os.path.join(m.import_dir, "gap.dcm")],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(long_b) > 60000  # both within the earlier file's bytes
    assert r.stdout == b"A" * 10 + bytes(30000 - 10) + b"B" + bytes(60000 - 30001)
    assert ru.file_state(os.path.join(m.import_dir, "short.dcm")) == "pending"
    m.kill9()
    ru.faults_off(emu)
    ok, msg = m.try_start(commit_delay=1)
    assert ok, "remount after SIGKILL failed:\n" + msg
    wrc, wout = m.wait(timeout=120)
    assert wrc == 0, (wout[-1500:], m.log_tail(80))
    ru.check_exactly_once(emu, [long_sop, long2_sop, short_sop])
    assert instance_bytes(emu, study, series, short_sop) == short_b
    assert instance_bytes(emu, study, series, long_sop) == long_b


def test_damaged_spool_file_is_failed_at_restart(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    """A power loss can leave a pending file's spool file empty or holding
    another file's bytes (spool files are reused): at the next mount such a
    file is failed, never uploaded. Simulated by killing dicomfs before the
    uploads and changing the spool files behind its back."""
    emu = emulator_factory("--fault-paths", "/upload/")
    src = tmp_path / "src"
    files = ru.make_tree(str(src), 2, studies=1)
    m = res_mounts(emu, commit_delay=1, uploads=1)
    ru.set_faults(emu, latency_ms=8000)  # the uploads are still pending at the kill
    rc, err = ru.cp_r(str(src), m.import_dir)
    assert rc == 0, err
    m.kill9()
    ru.faults_off(emu)
    spool = os.path.join(m.cache_dir, "spool")
    names = sorted(os.listdir(spool))
    assert len(names) == 2, names
    a, b = (os.path.join(spool, n) for n in names)
    a_len = os.path.getsize(a)
    with open(b, "rb") as f:
        other = f.read()
    with open(a, "wb") as f:  # the other file's bytes, at this file's size
        f.write((other + bytes(a_len))[:a_len])
    os.truncate(b, 0)  # its bytes never reached the disk
    ok, msg = m.try_start(commit_delay=1)
    assert ok, "remount after SIGKILL failed:\n" + msg
    wrc, wout = m.wait(timeout=120)
    counts, failed = m.status()
    assert wrc == 1, (wrc, wout[-1500:], m.log_tail(40))
    assert len(failed) == 2, (failed, counts)
    assert "spool file lost or damaged" in "\n".join(failed)
    assert ru.qido_instances(emu) == []
