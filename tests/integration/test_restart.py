"""Suite 3, restart: the server goes away and comes back (emulator restart on
the same port and data, in the middle of uploads and of an import
operation), tokens expire every 5 seconds during an import run, and the
cache disk fills up (a small tmpfs as cache_dir: writers wait while
uploads free spool space, cp gets no ENOSPC, nothing accepted is lost, also
across a SIGKILL).
"""
import os
import time

import resilience_util as ru
from resilience_util import res_mounts, tmpfs_factory  # noqa: F401  (fixtures)


def check_all(emu, m, files, accepted, suite, record_property, extra, wait_timeout=300):
    wrc, wout = m.wait(timeout=wait_timeout)
    counts, failed = m.status()
    found = ru.try_check_exactly_once(emu, [files[r] for r in accepted],
                                      allowed_uids=files.values())
    figures = dict(files=len(files), accepted=len(accepted),
                   files_lost=ru.n_or_none(found["missing"]),
                   duplicates=ru.n_or_none(found["duplicates"]),
                   stray=ru.n_or_none(found["stray"]), stored=found["stored"],
                   emulator=ru.fault_totals(emu.stats()))
    figures.update(extra)
    ru.record_figures(suite, record_property, **figures)
    assert wrc == 0, "dicomfs wait exited %r\n%s\nstatus=%r %r\nlog:\n%s" % (
        wrc, wout[-1500:], counts, failed, m.log_tail(80))
    assert not failed, failed
    ru.assert_store_ok(found, "accepted")
    assert m.alive(), "dicomfs died:\n" + m.log_tail()
    return figures


def test_emulator_restart_during_uploads(emulator_factory, res_mounts, tmp_path):
    emu, m, files, at_restart = ru.copy_and_catch_mid_upload(
        emulator_factory, res_mounts, str(tmp_path / "src"), commit_delay=1)
    stats_before = ru.fault_totals(emu.stats())
    emu.restart()
    check_all(emu, m, files, list(files), "restart-during-uploads", None,
              dict(status_at_restart=at_restart, emulator_before_restart=stats_before))


def test_emulator_restart_during_import_operation(emulator_factory, res_mounts,  # noqa: F811
                                                  tmp_path):
    emu = emulator_factory("--lro-delay", "6000")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 120, studies=3)
    m = res_mounts(emu, commit_delay=1)
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err
    seen = {}

    ops_dir = os.path.join(m.store_dir, "operations")

    def importing():  # sealed batch, and its operation started (journaled, listed)
        c, _ = m.status()
        seen.update(c)
        return c.get("importing", 0) > 0 and len(os.listdir(ops_dir)) > 0

    assert ru.wait_until(importing, 120), "no import started: %r\n%s" % (seen, m.log_tail())
    ops_at_restart = len(ru.operations_list(emu))
    emu.restart()
    check_all(emu, m, files, list(files), "restart-during-import", None,
              dict(status_at_restart=dict(seen), emulator_ops_at_restart=ops_at_restart,
                   emulator_ops_after=len(ru.operations_list(emu))))


def run_short_tokens(emulator_factory, res_mounts, tmp_path, seconds,  # noqa: F811
                     record_property=None):
    """--token-ttl 5 while files keep arriving for `seconds`: several batches
    and imports cross token expiries. Nothing may fail or be lost."""
    emu = emulator_factory("--token-ttl", "5")
    src = str(tmp_path / "src")
    per_second = 4
    files = ru.make_tree(src, seconds * per_second, studies=4)
    m = res_mounts(emu, commit_delay=1)
    t0 = time.monotonic()
    loop = ru.CopyLoop(src, files, m.import_dir, pause=1.0 / per_second)
    loop.run()
    elapsed = time.monotonic() - t0
    assert loop.failed == [], "copies failed with short-lived tokens: %r" % loop.failed[:3]
    ops_dir = os.path.join(m.store_dir, "operations")
    figures = check_all(emu, m, files, loop.accepted, "token-ttl-5s", record_property,
                        dict(copy_seconds=round(elapsed, 1)), wait_timeout=240)
    # The operations this store started all succeeded (no 401 surfaced there).
    import json
    errors = []
    for fn in os.listdir(ops_dir):
        with open(os.path.join(ops_dir, fn)) as f:
            op = json.load(f)
        if "error" in op:
            errors.append(op)
    assert errors == [], errors[:2]
    assert figures["emulator"]["requests"] > 0
    return figures


def test_short_token_lifetime(emulator_factory, res_mounts, tmp_path):
    run_short_tokens(emulator_factory, res_mounts, tmp_path, 20, None)


def test_full_cache_disk(emulator, tmpfs_factory, res_mounts, tmp_path):
    """The cache DISK fills (cache_max set far above it, so the bound is not
    what stops writers): a write that meets ENOSPC waits while uploads free
    spool space (released once each staged object is verified) and goes on;
    cp never sees ENOSPC and every file is imported once. (Before spool space
    was released early, about a third of these copies failed with ENOSPC.)"""
    fs = tmpfs_factory("8m")
    cache = os.path.join(fs.dir, "cache")
    src = str(tmp_path / "src")
    # 40 files of ~300 KB = 12 MB: more than the 8 MB cache disk holds.
    files = ru.make_tree(src, 40, studies=2, rows=600, cols=512)
    m = res_mounts(emulator, cache_dir=cache, commit_delay=3, uploads=4,
                   extra_opts=["cache_max=1G"])
    loop = ru.CopyLoop(src, files, m.import_dir, max_failures=4)
    loop.run()
    assert loop.failed == [], "cp failed on a full cache disk: %r" % loop.failed[:3]
    assert m.alive(), "dicomfs died on a full cache disk:\n" + m.log_tail()
    figures = check_all(emulator, m, files, loop.accepted, "full-cache-disk", None,
                        dict(tmpfs="8m"))
    assert figures["files_lost"] == 0
    m.unmount()


def test_full_cache_disk_then_kill(emulator_factory, tmpfs_factory, res_mounts,  # noqa: F811
                                   tmp_path):
    """A full cache disk with slow uploads, writers waiting at it, then
    SIGKILL: every close() that returned 0 was durable (spool file or, once
    released, staged object, and the journal record), so the remount imports
    every accepted file; the copy cut by the kill is the only one refused."""
    emu = emulator_factory("--latency-ms", "150", "--fault-paths", "/upload/")
    fs = tmpfs_factory("8m")
    cache = os.path.join(fs.dir, "cache")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 40, studies=2, rows=600, cols=512)
    # Imports cannot start before the kill: a long quiet period.
    m = res_mounts(emu, cache_dir=cache, commit_delay=600, uploads=2,
                   extra_opts=["cache_max=1G"])
    loop = ru.CopyLoop(src, files, m.import_dir, max_failures=2)
    loop.start()
    seen = {}

    def waiting():
        c, _ = m.status()
        seen.update(c)
        return c.get("writers_waiting", 0) > 0

    hit = ru.wait_until(waiting, 120)
    m.kill9(before_unmount=loop.stop)
    loop.join(60)
    assert hit, "no writer ever waited at the full disk: %r" % seen
    ok, msg = m.try_start(commit_delay=1)
    assert ok, "remount on the full cache disk failed:\n" + msg
    check_all(emu, m, files, loop.accepted, "full-cache-disk-then-kill", None,
              dict(accepted_before_kill=len(loop.accepted), refused=len(loop.failed),
                   status_at_kill=dict(seen)))


def test_close_durable_when_journal_hits_full_disk(emulator_factory, tmpfs_factory,  # noqa: F811
                                                  res_mounts, tmp_path):
    """The exact edge of a full cache disk: the spool file of a small file
    still fits but the journal record that accepts it needs a new page. Then
    close() must fail (ENOSPC), or, if it returned 0, the file must survive a
    SIGKILL (a successful close() means durable)."""
    # Uploads refused for now: no journal writes in the background.
    emu = emulator_factory("--fault-paths", "/upload/", "--fail-rate", "1.0")
    fs = tmpfs_factory("8m")
    cache = os.path.join(fs.dir, "cache")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 80, studies=1)
    rels = list(files)
    m = res_mounts(emu, cache_dir=cache, commit_delay=600, uploads=2)
    log_path = os.path.join(cache, "journal", "log")
    page = os.statvfs(fs.dir).f_frsize
    accepted = []
    deltas = []
    target = None
    for i, rel in enumerate(rels[:-1]):
        before = os.stat(log_path).st_size if os.path.exists(log_path) else 0
        loop = ru.CopyLoop(src, [rel], m.import_dir)
        loop.run()
        assert loop.failed == [], loop.failed
        accepted.append(rel)
        after = os.stat(log_path).st_size
        if after > before:
            deltas.append(after - before)
        # The next accept writes about max(deltas) bytes: stop when they
        # would not fit in the log's last page.
        if len(deltas) >= 3 and page - after % page < min(deltas[-3:]) and after % page:
            target = rels[i + 1]
            break
    assert target, "the journal tail never got close to a page boundary: deltas=%r" % deltas[:10]
    # Fill the disk, leaving exactly one free page (the small file's spool page).
    filler = os.path.join(fs.dir, "filler")
    st = os.statvfs(fs.dir)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * (free - page))
    st = os.statvfs(fs.dir)
    free_now = st.f_bavail * st.f_frsize
    assert free_now == page, "could not leave exactly one page free: %d" % free_now
    size = os.path.getsize(os.path.join(src, target))
    assert size <= page
    last = ru.CopyLoop(src, [target], m.import_dir)
    last.run()
    last_ok = last.accepted == [target]
    journal_errors = [ln for ln in m.log().splitlines() if "cannot record in the journal" in ln]
    m.kill9()
    os.unlink(filler)
    ru.set_faults(emu, fail_rate=0)
    ok, msg = m.try_start(commit_delay=1)
    assert ok, "remount failed:\n" + msg
    all_accepted = accepted + ([target] if last_ok else [])
    check_all(emu, m, files, all_accepted, "journal-full-at-accept", None,
              dict(last_copy="accepted" if last_ok else "refused: " + last.failed[0][2].strip(),
                   journal_errors=len(journal_errors), log_deltas=deltas[-3:]))
