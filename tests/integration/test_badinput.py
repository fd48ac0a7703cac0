"""Suite 4, bad input: malformed export filters, files that are not DICOM
Part 10, odd and hostile file names, writes where writing makes no sense,
and malformed JSON / truncated bodies from the server. Each must give a
clear errno and start nothing; nothing may crash or hang the daemon.
"""
import errno
import json
import os
import threading
import time

import resilience_util as ru
from resilience_util import res_mounts  # noqa: F401  (fixture)

OK_UID = "1.2.840.113619.2.55.3.1"
OK2 = "1.2.3.4"

# (label, bytes). Every one must fail close() (or write()) with EINVAL.
BAD_FILTERS = [
    ("empty study uid", b"/studies/\n"),
    ("double dot", b"/studies/1..2\n"),
    ("trailing dot", b"/studies/1.2.3.\n"),
    ("leading dot", b"/studies/.1.2\n"),
    ("leading zero inner", b"/studies/1.02.3\n"),
    ("leading zero first", b"/studies/01.2\n"),
    ("leading zeros 0.0.01", b"/studies/0.0.01\n"),
    ("leading zero instance", ("/studies/%s/series/%s/instances/5.06\n" % (OK_UID, OK2)).encode()),
    ("letter in uid", b"/studies/1.2.a\n"),
    ("trailing letter", b"/studies/1.2.3x\n"),
    ("series at top", b"/series/1\n"),
    ("instances at top", b"/instances/1.2.3\n"),
    ("instances under study", b"/studies/1/instances/2\n"),
    ("empty series", ("/studies/%s/series/\n" % OK_UID).encode()),
    ("empty instance", ("/studies/%s/series/%s/instances/\n" % (OK_UID, OK2)).encode()),
    ("frames", ("/studies/%s/series/%s/instances/5.6/frames/1\n" % (OK_UID, OK2)).encode()),
    ("trailing component", ("/studies/%s/series/%s/instances/5.6/x\n" % (OK_UID, OK2)).encode()),
    ("trailing slash study", ("/studies/%s/\n" % OK_UID).encode()),
    ("trailing slash series", ("/studies/%s/series/%s/\n" % (OK_UID, OK2)).encode()),
    ("trailing slash instance",
     ("/studies/%s/series/%s/instances/5.6/\n" % (OK_UID, OK2)).encode()),
    ("no leading slash", ("studies/%s\n" % OK_UID).encode()),
    ("double leading slash", ("//studies/%s\n" % OK_UID).encode()),
    ("empty component", ("/studies//series/%s\n" % OK2).encode()),
    ("capital Studies", ("/Studies/%s\n" % OK_UID).encode()),
    ("upper STUDIES", ("/STUDIES/%s\n" % OK_UID).encode()),
    ("lower series typo", ("/studies/%s/serie/%s\n" % (OK_UID, OK2)).encode()),
    ("trailing space", ("/studies/%s \n" % OK_UID).encode()),
    ("leading space", (" /studies/%s\n" % OK_UID).encode()),
    ("space inside", b"/studies/ 1.2\n"),
    ("trailing tab", ("/studies/%s\t\n" % OK_UID).encode()),
    ("leading tab", ("\t/studies/%s\n" % OK_UID).encode()),
    ("CR alone inside", ("/studies/%s\rX\n" % OK_UID).encode()),
    ("CR alone as separator", ("/studies/%s\r/studies/%s" % (OK_UID, OK2)).encode()),
    ("trailing garbage", ("/studies/%s garbage\n" % OK_UID).encode()),
    ("comment", ("/studies/%s#x\n" % OK_UID).encode()),
    ("65-char uid", ("/studies/1." + "2" * 63 + "\n").encode()),
    ("100-char uid", ("/studies/1." + "23" * 49 + "\n").encode()),
    ("binary", b"\x00\x01\x02\xff\xfe\x80\n"),
    ("NUL inside uid", ("/studies/1.2\x003\n").encode()),
    ("NUL line", b"\x00\n"),
    ("NUL after valid line", ("/studies/%s\n\x00" % OK_UID).encode()),
    ("10 MB line", b"/studies/" + b"1." * (5 << 20) + b"1\n"),
    ("10 MB of letters", b"a" * (10 << 20)),
    ("non-ASCII", ("/studies/%s\u00e9\n" % OK_UID).encode()),
    ("negative", b"/studies/-1.2\n"),
    ("plus sign", b"/studies/+1.2\n"),
    ("comma", b"/studies/1,2\n"),
    ("semicolon", b"/studies/1.2;3\n"),
    ("series twice", ("/studies/%s/series/%s/series/%s\n" % (OK_UID, OK2, OK2)).encode()),
    ("studies twice", ("/studies/%s/studies/%s\n" % (OK_UID, OK2)).encode()),
    ("studies without uid", b"/studies\n"),
    ("slash alone", b"/\n"),
    ("bad second line", ("/studies/%s\n/studies/x\n" % OK_UID).encode()),
    ("bad last line of many", ("/studies/%s\n" % OK_UID).encode() * 1000 + b"/studies/1..1\n"),
    ("backslashes", ("/studies/%s\\series\\%s\n" % (OK_UID, OK2)).encode()),
    ("query string", ("/studies/%s?x=1\n" % OK_UID).encode()),
    ("percent-encoded", b"/studies/%31.2\n"),
    ("UTF-8 BOM", ("\ufeff/studies/%s\n" % OK_UID).encode()),
    ("whitespace line", ("/studies/%s\n   \n" % OK_UID).encode()),
    ("gs URI", ("gs://bucket/studies/%s\n" % OK_UID).encode()),
    ("full resource name", ("projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb/studies/%s\n"
                            % OK_UID).encode()),
]


def run_bad_filters(emulator, res_mounts, record_property=None, extra_cases=()):  # noqa: F811
    cases = BAD_FILTERS + list(extra_cases)
    m = res_mounts(emulator)
    fmt_dir = os.path.join(m.store_dir, "export", "dicom")
    ops_dir = os.path.join(m.store_dir, "operations")
    local_before = sorted(os.listdir(ops_dir))
    remote_before = sorted(ru.operations_list(emulator))
    wrong = []
    for i, (label, data) in enumerate(cases):
        e = ru.write_file(os.path.join(fmt_dir, "bad%03d" % i), data)
        if e is None or e.errno != errno.EINVAL:
            wrong.append((label, ru.errno_name(e)))
    time.sleep(2)  # anything started asynchronously would show up by now
    local_after = sorted(os.listdir(ops_dir))
    remote_after = sorted(ru.operations_list(emulator))
    alive = m.alive()
    ru.record_figures("bad-filters", record_property, bad_inputs=len(cases),
                      wrong_errno=len(wrong), operations_started=len(remote_after) -
                      len(remote_before))
    assert wrong == [], "%d of %d bad filters did not fail with EINVAL: %r" % (
        len(wrong), len(cases), wrong)
    assert local_after == local_before, "STORE/operations/ changed: %r" % local_after
    assert remote_after == remote_before, "operations started: %r" % (
        sorted(set(remote_after) - set(remote_before)),)
    assert alive, m.log_tail()
    log = m.log()
    assert "bad000" in log, "no log line names the rejected filter:\n" + m.log_tail()

    # Control: a valid filter is accepted and does start an export, so the
    # failures above are the checks at work, not a broken export/.
    e = ru.write_file(os.path.join(fmt_dir, "good"), ("/studies/%s\n" % OK_UID).encode())
    assert e is None, "a valid filter was refused: %r\n%s" % (e, m.log_tail())
    assert ru.wait_until(lambda: len(ru.operations_list(emulator)) > len(remote_before), 30), \
        "a valid filter started no operation"
    return len(cases)


def test_bad_filters(emulator, res_mounts):  # noqa: F811
    n = run_bad_filters(emulator, res_mounts, None)
    assert n >= 50


def test_bad_import_files(emulator, res_mounts, tmp_path):  # noqa: F811
    src = str(tmp_path / "src")
    good = ru.make_tree(src, 2, studies=1)
    good_rel = list(good)
    with open(os.path.join(src, good_rel[0]), "rb") as f:
        valid = f.read()
    assert len(valid) > 600
    cases = [
        ("text", b"hello, this is not DICOM\n" * 20),
        ("zero-length", b""),
        ("one byte", b"\x00"),
        ("cut at 100", valid[:100]),
        ("cut at 131", valid[:131]),
        ("cut at 132", valid[:132]),
        ("cut at 500", valid[:500]),
        ("preamble only", b"\x00" * 128),
        ("DICM at 0", b"DICM" + valid[132:]),
        ("wrong magic", valid[:128] + b"DICN" + valid[132:]),
        ("random bytes", os.urandom(4096)),
        ("PNG", b"\x89PNG\r\n\x1a\n" + os.urandom(400)),
        ("raw dataset (no preamble)", valid[132:]),
    ]
    m = res_mounts(emulator)
    wrong = []
    for i, (label, data) in enumerate(cases):
        name = "bad%02d.dcm" % i
        e = ru.write_file(os.path.join(m.import_dir, name), data)
        if e is None or e.errno != errno.EINVAL:
            wrong.append((label, ru.errno_name(e)))
    listed = sorted(os.listdir(m.import_dir))
    # Control: a valid file in the same directory is accepted and imported.
    e = ru.write_file(os.path.join(m.import_dir, "good.dcm"), valid)
    assert e is None, "a valid file was refused: %r\n%s" % (e, m.log_tail())
    wrc, wout = m.wait(timeout=120)
    found = ru.try_check_exactly_once(emulator, [good[good_rel[0]]])
    ru.record_figures("bad-import-files", None, bad_inputs=len(cases),
                      wrong_errno=len(wrong), files_lost=ru.n_or_none(found["missing"]))
    assert wrong == [], "%d of %d bad files did not fail close() with EINVAL: %r" % (
        len(wrong), len(cases), wrong)
    # each refusal stays visible (an empty entry, a "rejected:" status line
    # that wait prints and counts) until the entry is removed
    bad = ["bad%02d.dcm" % i for i in range(len(cases))]
    assert [n for n in listed if n.startswith("bad")] == bad, listed
    assert all(os.path.getsize(os.path.join(m.import_dir, n)) == 0 for n in bad)
    assert "bad00.dcm" in m.log(), "no log line names the rejected file:\n" + m.log_tail()
    assert wrc == 1 and "rejected: import/bad00.dcm: " in wout, wout[-1000:]
    for n in bad:
        os.unlink(os.path.join(m.import_dir, n))
    wrc, wout = m.wait(timeout=120)
    assert wrc == 0, wout[-1000:]
    ru.assert_store_ok(found, "valid")
    assert m.alive()


def test_odd_names(emulator, res_mounts, tmp_path):  # noqa: F811
    src = str(tmp_path / "src")
    names = [
        "with space.dcm",
        "  leading and trailing spaces  ",
        "\u00fcn\u00efc\u00f6d\u00e9-\u753b\u50cf.dcm",
        "new\nline.dcm",
        "tab\there.dcm",
        "carriage\rreturn.dcm",
        "a" * 251 + ".dcm",               # 255 bytes: allowed
        "\u00e9" * 127 + "x",             # 255 bytes of UTF-8
        "..dcm",
        "...",
        "-leading-dash.dcm",
        "back\\slash.dcm",
        "quote'\"s.dcm",
        "$(touch pwned).dcm",
    ]
    files = ru.make_tree(src, len(names), studies=1)
    data = {}
    for rel in files:
        with open(os.path.join(src, rel), "rb") as f:
            data[rel] = f.read()
    rels = list(files)
    # A long quiet period keeps the files listed (pending) while we look.
    m = res_mounts(emulator, commit_delay=5)
    results = []
    for name, rel in zip(names, rels):
        assert len(name.encode()) <= 255
        e = ru.write_file(os.path.join(m.import_dir, name), data[rel])
        results.append((name, ru.errno_name(e)))
    refused = [r for r in results if r[1] != "ok"]
    listing = set(os.listdir(m.import_dir))

    too_long = ru.write_file(os.path.join(m.import_dir, "b" * 252 + ".dcm"), data[rels[0]])
    too_long_utf8 = ru.write_file(os.path.join(m.import_dir, "\u00e9" * 128), data[rels[0]])
    # ".." from import/ leads to the store directory: no file may appear there.
    os.mkdir(os.path.join(m.import_dir, "sub"))
    dotdot = []
    for p in ("../evil.dcm", "sub/../../evil2.dcm", "../status", "../operations/evil.json",
              "../../evil3.dcm"):
        e = ru.write_file(os.path.join(m.import_dir, p), data[rels[0]])
        dotdot.append((p, ru.errno_name(e)))
    escaped = [p for p in ("evil.dcm", "evil2.dcm") if os.path.exists(
        os.path.join(m.store_dir, p))] + (
        ["evil3.dcm"] if os.path.exists(os.path.join(m.dataset_dir, "evil3.dcm")) else [])
    # sub/../name resolves inside import/: allowed, it is just import/name.
    e_inside = ru.write_file(os.path.join(m.import_dir, "sub", "..", "inside.dcm"),
                             data[rels[1]])

    wrc, wout = m.wait(timeout=120)
    accepted = [rel for (name, res), rel in zip(results, rels) if res == "ok"]
    if e_inside is None:
        accepted.append(rels[1])
    found = ru.try_check_exactly_once(emulator, [files[r] for r in accepted],
                                  allowed_uids=files.values())
    # The user's names never reach the local disk (spool files are random ids).
    on_disk = []
    for dirpath, dirnames, filenames in os.walk(m.cache_dir):
        for n in dirnames + filenames:
            if any(n == name or name in n for name in names if len(name) > 4):
                on_disk.append(n)
    bad_dotdot = [d for d in dotdot if d[1] not in ("EPERM", "EACCES", "EROFS")]
    ru.record_figures("odd-names", None, bad_inputs=len(names) + 2 + len(dotdot),
                      refused_valid_names=len(refused), files_lost=ru.n_or_none(found["missing"]))
    assert refused == [], "valid names refused: %r" % refused
    assert set(names) <= listing, "names not listed as written: %r" % (set(names) - listing,)
    assert too_long is not None and too_long.errno == errno.ENAMETOOLONG, ru.errno_name(too_long)
    assert too_long_utf8 is not None and too_long_utf8.errno == errno.ENAMETOOLONG, \
        ru.errno_name(too_long_utf8)
    assert escaped == [], "a file escaped import/ through '..': %r" % escaped
    assert all(d[1] != "ok" for d in dotdot), "a '..' write outside import/ succeeded: %r" % dotdot
    assert bad_dotdot == [], "unexpected errno for '..' writes: %r" % bad_dotdot
    assert e_inside is None, "import/sub/../inside.dcm refused: %r" % e_inside
    assert on_disk == [], "user file names on the cache disk: %r" % on_disk
    assert wrc == 0, "wait exited %r: %s\n%s" % (wrc, wout[-1000:], m.log_tail())
    ru.assert_store_ok(found, "accepted")
    # Imported files stay listed (remembered) under the names they were given.
    after = set(os.listdir(m.import_dir))
    want = listing | {"sub", "inside.dcm"}
    assert after == want, "the listing changed with the import: %r" % (after ^ want,)
    states = {n: ru.file_state(os.path.join(m.import_dir, n)) for n in names}
    assert set(states.values()) == {"imported"}, states


def test_truncated_data_set_is_refused(emulator, res_mounts, tmp_path):
    """A file cut short inside its data set (the header and UIDs intact, the
    last element shorter than its length says): an interrupted copy at the
    source. Accepting it would only move the failure to the server's import,
    after cp reported success."""
    src = str(tmp_path / "src")
    good = ru.make_tree(src, 1, studies=1, rows=64, cols=64)
    with open(os.path.join(src, list(good)[0]), "rb") as f:
        valid = f.read()
    m = res_mounts(emulator)
    results = []
    for cut in (1, 100, 2000):
        e = ru.write_file(os.path.join(m.import_dir, "short%d.dcm" % cut), valid[:-cut])
        results.append((cut, ru.errno_name(e)))
    ru.record_figures("truncated-data-set", None, bad_inputs=len(results),
                      results=results)
    assert all(r == "EINVAL" for _, r in results), \
        "files cut short inside the data set were accepted: %r" % results


READONLY_ERRNOS = (errno.EROFS, errno.EPERM, errno.EACCES)


def test_writes_where_writing_makes_no_sense(emulator, res_mounts, tmp_path):
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 1, studies=1)
    m = res_mounts(emulator)
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err
    wrc, _ = m.wait(timeout=120)
    assert wrc == 0
    ops_dir = os.path.join(m.store_dir, "operations")
    ds_ops = os.path.join(m.dataset_dir, "operations")
    ops = sorted(os.listdir(ops_dir))
    assert ops, "the import left no operation in STORE/operations/"
    op_file = os.path.join(ops_dir, ops[0])
    with open(op_file, "rb") as f:
        op_before = f.read()
    listings = {d: sorted(os.listdir(d)) for d in (m.mnt, m.dataset_dir, m.store_dir, ops_dir,
                                                    ds_ops)}
    wrong = []

    def expect_ro(label, fn):
        try:
            fn()
            wrong.append((label, "ok"))
        except OSError as e:
            if e.errno not in READONLY_ERRNOS:
                wrong.append((label, ru.errno_name(e)))

    def create(p):
        e = ru.write_file(p, b"x")
        if e:
            raise e

    def open_w(p):
        fd = os.open(p, os.O_WRONLY)
        os.close(fd)

    cases = [
        ("create in root", lambda: create(os.path.join(m.mnt, "x.dcm"))),
        ("create in DATASET/", lambda: create(os.path.join(m.dataset_dir, "x.dcm"))),
        ("create in DATASET/operations/", lambda: create(os.path.join(ds_ops, "x.json"))),
        ("create in STORE/", lambda: create(os.path.join(m.store_dir, "x.dcm"))),
        ("create in STORE/operations/", lambda: create(os.path.join(ops_dir, "x.json"))),
        ("open STORE/status for writing", lambda: open_w(os.path.join(m.store_dir, "status"))),
        ("open ID.json for writing", lambda: open_w(op_file)),
        ("truncate ID.json", lambda: os.truncate(op_file, 0)),
        ("unlink ID.json", lambda: os.unlink(op_file)),
        ("rename ID.json", lambda: os.rename(op_file, op_file + ".x")),
        ("mkdir in STORE/operations/", lambda: os.mkdir(os.path.join(ops_dir, "d"))),
        ("mkdir in DATASET/operations/", lambda: os.mkdir(os.path.join(ds_ops, "d"))),
        ("truncate STORE/status", lambda: os.truncate(os.path.join(m.store_dir, "status"), 0)),
        ("unlink STORE/status", lambda: os.unlink(os.path.join(m.store_dir, "status"))),
        ("symlink in STORE/operations/", lambda: os.symlink("/etc/passwd",
                                                            os.path.join(ops_dir, "l"))),
        ("mknod fifo in root", lambda: os.mkfifo(os.path.join(m.mnt, "fifo"))),
        ("hard link of ID.json", lambda: os.link(op_file, os.path.join(ops_dir, "copy.json"))),
        ("rmdir STORE/operations", lambda: os.rmdir(ops_dir)),
        ("rmdir the store (no allow_delete)", lambda: os.rmdir(m.store_dir)),
    ]
    for label, fn in cases:
        expect_ro(label, fn)
    after = {d: sorted(os.listdir(d)) for d in listings}
    with open(op_file, "rb") as f:
        op_after = json.loads(f.read())
    ru.record_figures("readonly-places", None, bad_inputs=len(cases),
                      wrong_errno=len(wrong))
    assert wrong == [], "writes that should fail with EROFS/EPERM/EACCES: %r" % wrong
    assert after == listings, "a refused write changed a listing: %r -> %r" % (listings, after)
    assert op_after.get("name") == json.loads(op_before).get("name")
    assert m.alive()


def _timed(fn, timeout):
    """Runs fn in a thread; returns ('ok'|errno name|'HANG'|'EXC:...', value)."""
    out = {}

    def body():
        try:
            out["v"] = fn()
            out["r"] = "ok"
        except OSError as e:
            out["r"] = ru.errno_name(e)
        except Exception as e:  # a wrong answer, e.g. invalid JSON from cat
            out["r"] = "EXC:%s" % type(e).__name__
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "HANG", None
    return out.get("r"), out.get("v")


def test_malformed_server_responses(emulator, res_mounts, tmp_path):  # noqa: F811
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 30, studies=2)
    m = res_mounts(emulator, commit_delay=1)
    # One import without faults, so that there are operations to read.
    first = list(files)[:5]
    loop = ru.CopyLoop(src, first, m.import_dir)
    loop.run()
    assert loop.failed == []
    assert m.wait(timeout=120)[0] == 0
    ops_dir = os.path.join(m.store_dir, "operations")
    ds_ops = os.path.join(m.dataset_dir, "operations")

    ru.set_faults(emulator, malformed_rate=0.4)
    outcomes = {}

    def note(r):
        outcomes[r] = outcomes.get(r, 0) + 1

    def read_json(p):
        with open(p, "rb") as f:
            return json.loads(f.read())

    t0 = time.monotonic()
    for _ in range(15):
        for fn in (lambda: os.listdir(m.mnt), lambda: os.listdir(m.dataset_dir),
                   lambda: os.listdir(ds_ops), lambda: os.listdir(ops_dir),
                   lambda: [read_json(os.path.join(ops_dir, f)) for f in os.listdir(ops_dir)],
                   lambda: [read_json(os.path.join(ds_ops, f)) for f in os.listdir(ds_ops)],
                   lambda: os.listdir(os.path.join(m.store_dir, "studies")),
                   lambda: open(os.path.join(m.store_dir, "status")).read()):
            r, _ = _timed(fn, 90)
            note(r)
            if r == "HANG":
                break
    # Imports while responses are garbled: accepted files must still land.
    rest = list(files)[5:]
    loop = ru.CopyLoop(src, rest, m.import_dir)
    loop.run()
    # Under garbled answers: dicomfs wait and STORE/status (a wrong errno
    # such as ENOENT for a store that exists is a finding).
    wrc_faulty, _ = m.wait(timeout=240)
    st_r, st_v = _timed(m.status, 30)
    note(st_r)
    stats = ru.fault_totals(emulator.stats())
    ru.faults_off(emulator)
    alive = m.alive()
    # Clean answers again: the mount must answer (allowing for its caches to
    # expire) and every accepted file must land.
    t_off = time.monotonic()
    recovered = ru.wait_until(lambda: _timed(m.status, 30)[0] == "ok", 90, interval=1)
    recovery_s = round(time.monotonic() - t_off, 1)
    wrc, wout = m.wait(timeout=240) if recovered else (None, "")
    counts, failed_lines = m.status() if recovered else ({}, [])
    found = ru.try_check_exactly_once(emulator, [files[r] for r in first + loop.accepted],
                                      allowed_uids=files.values())
    ru.record_figures("malformed-responses", None, outcomes=outcomes,
                      faults=stats, seconds=round(time.monotonic() - t0, 1),
                      files=len(files), files_lost=ru.n_or_none(found["missing"]),
                      copies_failed=len(loop.failed), wait_rc_under_faults=wrc_faulty,
                      recovery_seconds=recovery_s, wait_rc=wrc, status=counts,
                      failed_sample=failed_lines[:3],
                      copy_errors=sorted({f[2].strip()[-80:] for f in loop.failed})[:3])
    assert alive, "dicomfs died on malformed responses:\n" + m.log_tail()
    assert "HANG" not in outcomes, "a call hung on malformed responses: %r" % outcomes
    assert recovered, "dicomfs does not answer 90 s after the faults stopped:\n" + m.log_tail()
    assert stats["malformed"] > 0, "no malformed responses were injected: %r" % stats
    assert loop.failed == [], "cp failed while the server garbled responses: %r" % loop.failed[:3]
    assert wrc == 0, "wait exited %r after the faults: %s\n%s" % (
        wrc, wout[-1000:], m.log_tail())
    ru.assert_store_ok(found, "accepted")
    unexpected = {k: v for k, v in outcomes.items()
                  if k not in ("ok", "EIO", "EAGAIN", "EPROTO", "EBADMSG", "ETIMEDOUT")}
    assert unexpected == {}, "malformed responses gave: %r" % outcomes



def test_mount_against_a_garbling_server(emulator_factory, res_mounts):  # noqa: F811
    """Every JSON answer garbled from the very first: the mount must fail
    with a message, not hang or crash."""
    emu2 = emulator_factory("--malformed-rate", "1.0")
    m2 = res_mounts(emu2, start=False)
    t1 = time.monotonic()
    ok, msg = m2.try_start(ready_timeout=120)
    took = time.monotonic() - t1
    if ok:
        # Mounting may succeed if every check retried to success; then calls
        # must still end with an errno.
        r, _ = _timed(lambda: os.listdir(m2.dataset_dir), 90)
        assert r != "HANG" and not r.startswith("EXC"), r
    else:
        assert m2.rc not in (None, 0) and m2.rc > 0, \
            "dicomfs died by a signal (%r) on garbled responses:\n%s" % (m2.rc, msg)
        assert "dicomfs:" in msg, msg
    ru.record_figures("mount-garbling-server", None, mounted=ok, rc=m2.rc,
                      seconds=round(took, 1))
    assert took < 120
