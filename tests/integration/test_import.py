"""Integration tests of STORE/import/: real dicomfs mounts of the emulator.

cp, cp -r, rsync -a (twice), rejection of non-DICOM and empty files with the
error visible to cp, `dicomfs wait`, operation counters in STORE/operations/,
every SOP Instance UID in the store exactly once (QIDO against the emulator),
files leaving import/ once imported, unmount with uploads pending and remount
with the same cache directory, hostile names.

Mounts come from mount_factory (mount_fixture.py) with a chosen commit_delay;
ImportMount adds the store-level helpers. DICOM files are written by pydicom at
test time.
"""
import collections
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse

import pytest
from resilience_util import file_state

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT, LOCATION, DATASET, STORE = "test-project", "us-central1", "ds", "store"
STORE_NAME = "projects/%s/locations/%s/datasets/%s/dicomStores/%s" % (
    PROJECT, LOCATION, DATASET, STORE)


def dicomfs_binary():
    build = os.environ.get("DICOMFS_BUILD", os.path.join(REPO, "build-san"))
    return os.path.join(build, "fs", "dicomfs")


# ---------------------------------------------------------------- samples

def write_instance(path, study, series, number, syntax=ExplicitVRLittleEndian):
    """One Secondary Capture instance with a small pixel matrix; returns its UID."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = number
    ds.PatientName = "Import^Test"
    ds.PatientID = "IMP-1"
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((number + i) % 256 for i in range(64))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, write_like_original=False)
    return uid


def make_tree(root, studies=3, series=2, instances=2, names=None):
    """root/STUDY/SERIES/IMAGE.dcm; returns {relative path: SOP Instance UID}."""
    out = {}
    names = names or {}
    n = 0
    for s in range(studies):
        study = generate_uid()
        study_dir = names.get(("study", s), "study %d" % s)
        for se in range(series):
            ser = generate_uid()
            for i in range(instances):
                n += 1
                rel = os.path.join(study_dir, "series-%d" % se, "img %03d.dcm" % i)
                syntax = ImplicitVRLittleEndian if n % 2 else ExplicitVRLittleEndian
                out[rel] = write_instance(os.path.join(root, rel), study, ser, n, syntax)
    return out


# ---------------------------------------------------------------- mount

class ImportMount:
    """Store-level helpers over a DicomfsMount of mount_fixture.py."""

    def __init__(self, mount):
        self.m = mount
        self.cache_dir = mount.cache_dir

    def store_dir(self):
        return self.m.path(DATASET, STORE)

    def import_dir(self):
        return os.path.join(self.store_dir(), "import")

    def status(self):
        with open(os.path.join(self.store_dir(), "status")) as f:
            text = f.read()
        counts = {}
        failed = []
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == "failed" and not value.isdigit():
                failed.append(value)
            elif value.isdigit():
                counts[key] = int(value)
        return counts, failed

    def log(self):
        return self.m.log_text()[-6000:]

    def wait(self, timeout=90):
        return subprocess.run([dicomfs_binary(), "wait", self.store_dir(), "--timeout",
                               str(timeout)], capture_output=True, text=True,
                              timeout=timeout + 30)

    def unmount(self):
        self.m.stop()
        return 0

    def remount(self, commit_delay):
        self.m.extra = [o for o in self.m.extra if not o.startswith("commit_delay=")]
        self.m.extra.append("commit_delay=%g" % commit_delay)
        self.m.remount()
        return self


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="dicomfs-import-test.")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mounts(mount_factory):
    def make(commit_delay=1, uploads=4):
        return ImportMount(mount_factory(options=("commit_delay=%g" % commit_delay,
                                                  "uploads=%d" % uploads)))
    return make


# ---------------------------------------------------------------- checks

def store_uids(emu):
    """Every SOP Instance UID in the store, with repeats (QIDO-RS, paged)."""
    uids = []
    offset = 0
    while True:
        q = urllib.parse.urlencode({"limit": 500, "offset": offset, "includefield": "00080018"})
        status, _, body = emu.request(
            "GET", "/v1/%s/dicomWeb/instances?%s" % (STORE_NAME, q),
            headers={"Accept": "application/dicom+json"})
        assert status in (200, 204), (status, body[:300])
        page = json.loads(body) if status == 200 and body.strip() else []
        uids += [r["00080018"]["Value"][0] for r in page]
        if len(page) < 500:
            return collections.Counter(uids)
        offset += len(page)


def import_success_count(m):
    """Sum of counter.success over the store's operations/ID.json files."""
    total = 0
    ops = glob.glob(os.path.join(m.store_dir(), "operations", "*.json"))
    for path in ops:
        with open(path) as f:
            op = json.load(f)
        assert op.get("done") is True, op
        assert "error" not in op, op
        total += int(op["metadata"]["counter"].get("success", "0"))
    return total, len(ops)


def assert_all_imported_once(emu, expected_uids):
    got = store_uids(emu)
    missing = [u for u in expected_uids if got[u] == 0]
    dup = [u for u in expected_uids if got[u] > 1]
    assert not missing, "not in the store: %s" % missing
    assert not dup, "more than once: %s" % dup


def staged_objects(emu):
    status, _, body = emu.request("GET", "/storage/v1/b/staging/o?prefix=dicomfs/")
    assert status == 200, body[:300]
    return [o["name"] for o in json.loads(body).get("items", [])]


def wait_listing(path, want, timeout=10):
    """A rejected file is dropped at RELEASE, which the kernel sends after
    close() returned: poll a moment for the listing to settle."""
    deadline = time.time() + timeout
    while True:
        got = sorted(os.listdir(path))
        if got == sorted(want) or time.time() > deadline:
            return got
        time.sleep(0.05)


def listed_files(top):
    out = []
    for d, _, files in os.walk(top):
        out += [os.path.relpath(os.path.join(d, f), top) for f in files]
    return sorted(out)


# ---------------------------------------------------------------- tests

def test_import_cp_one_file(mounts, emulator, workdir):
    src = os.path.join(workdir, "one.dcm")
    uid = write_instance(src, generate_uid(), generate_uid(), 1)
    m = mounts(commit_delay=1)
    r = subprocess.run(["cp", src, m.import_dir()], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Durable and listed right after close(): spooled, not yet imported.
    st = os.stat(os.path.join(m.import_dir(), "one.dcm"))
    assert st.st_size == os.path.getsize(src)
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    assert "1/1 imported" in w.stdout
    # Remembered once imported: still listed, in state "imported".
    assert os.listdir(m.import_dir()) == ["one.dcm"]
    assert file_state(os.path.join(m.import_dir(), "one.dcm")) == "imported"
    assert_all_imported_once(emulator, [uid])
    success, nops = import_success_count(m)
    assert (success, nops) == (1, 1)
    counts, failed = m.status()
    assert counts["imported"] == 1 and counts["failed"] == 0 and not failed
    assert counts["bytes_uploaded"] == os.path.getsize(src)
    # The staged object was removed after the import.
    deadline = time.monotonic() + 10
    while staged_objects(emulator) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert staged_objects(emulator) == []


def test_import_deletes_staged_objects_in_one_batch(mounts, emulator, workdir):
    # After an import, its files' staged objects go with ONE batch request
    # (POST /batch/storage/v1), not one DELETE each.
    src = os.path.join(workdir, "src")
    uids = make_tree(src, studies=1, series=2, instances=4)
    before = emulator.stats()["gcs"]
    m = mounts(commit_delay=1)
    r = subprocess.run(["cp", "-r", src, os.path.join(m.import_dir(), "b")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    assert_all_imported_once(emulator, list(uids.values()))
    deadline = time.monotonic() + 10
    while staged_objects(emulator) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert staged_objects(emulator) == []
    after = emulator.stats()["gcs"]
    assert after["objectDeletes"] == before["objectDeletes"], after
    assert after["batchCalls"] - before["batchCalls"] == len(uids), after
    # One import: its deletes are queued together and leave in few batches
    # (workers may split them), far fewer than one per file.
    assert 1 <= after["batchRequests"] - before["batchRequests"] < len(uids), after


def test_import_cp_r_three_studies_with_hostile_names(mounts, emulator, workdir):
    src = os.path.join(workdir, "src")
    names = {("study", 0): "study with spaces", ("study", 1): "\u00e9tude \u540d\u524d",
             ("study", 2): "plain"}
    uids = make_tree(src, studies=3, series=2, instances=2, names=names)
    m = mounts(commit_delay=1)
    r = subprocess.run(["cp", "-r", src, os.path.join(m.import_dir(), "tree")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert listed_files(os.path.join(m.import_dir(), "tree")) == sorted(uids)
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    # Remembered: still listed under their names, each in state "imported".
    tree = os.path.join(m.import_dir(), "tree")
    assert listed_files(tree) == sorted(uids)
    assert {file_state(os.path.join(tree, p)) for p in uids} == {"imported"}
    assert_all_imported_once(emulator, uids.values())
    success, nops = import_success_count(m)
    assert success == len(uids)
    assert nops >= 1
    # Local cache: spool files gone (removed by the workers just after the
    # import is seen done, so poll a moment), names never used on disk.
    spool = os.path.join(m.cache_dir, "spool")
    deadline = time.monotonic() + 10
    while os.listdir(spool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(spool) == []


def test_import_rsync_twice_transfers_and_imports_nothing_new(mounts, emulator, workdir):
    if not shutil.which("rsync"):
        pytest.fail("rsync is not installed (contrib/install-deps.sh lists it)")
    src = os.path.join(workdir, "src")
    uids = make_tree(src, studies=2, series=2, instances=3)
    # A long quiet period so that the second run sees the first run's files.
    m = mounts(commit_delay=4)
    dst = m.import_dir() + "/"
    r1 = subprocess.run(["rsync", "-a", "--stats", src + "/", dst], capture_output=True,
                        text=True)
    assert r1.returncode == 0, r1.stderr
    assert "Number of regular files transferred: %d" % len(uids) in r1.stdout
    r2 = subprocess.run(["rsync", "-a", "--stats", src + "/", dst], capture_output=True,
                        text=True)
    assert r2.returncode == 0, r2.stderr
    assert "Number of regular files transferred: 0" in r2.stdout, r2.stdout
    # rsync's temporary names never show up.
    assert all(not os.path.basename(p).startswith(".") for p in listed_files(m.import_dir()))
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    assert_all_imported_once(emulator, uids.values())
    success, _ = import_success_count(m)
    assert success == len(uids)
    counts, _ = m.status()
    assert counts["imported"] == len(uids)


def test_import_rejects_non_dicom_and_empty(mounts, emulator, workdir):
    m = mounts(commit_delay=1)
    text = os.path.join(workdir, "notes.dcm")
    with open(text, "w") as f:
        f.write("this is not DICOM\n" * 20)
    r = subprocess.run(["cp", text, m.import_dir()], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr, r.stderr
    empty = os.path.join(workdir, "empty.dcm")
    open(empty, "w").close()
    r = subprocess.run(["cp", empty, m.import_dir()], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr, r.stderr
    # dropped, each leaving an empty entry as its visible trace until removed
    assert wait_listing(m.import_dir(), ["empty.dcm", "notes.dcm"]) == ["empty.dcm", "notes.dcm"]
    for n in ("empty.dcm", "notes.dcm"):
        os.unlink(os.path.join(m.import_dir(), n))
    assert "not a DICOM Part-10 file" in m.log()
    # A valid file next to them still goes through.
    good = os.path.join(workdir, "good.dcm")
    uid = write_instance(good, generate_uid(), generate_uid(), 1)
    r = subprocess.run(["cp", good, m.import_dir()], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr)
    assert_all_imported_once(emulator, [uid])
    assert sum(store_uids(emulator).values()) == 1


def test_import_pending_survives_unmount_and_remount(mounts, emulator, workdir):
    src = os.path.join(workdir, "src")
    uids = make_tree(src, studies=1, series=1, instances=4)
    m = mounts(commit_delay=600)  # nothing is committed while mounted
    r = subprocess.run(["cp", "-r", src + "/.", m.import_dir()], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    counts, _ = m.status()
    assert counts["spooled"] + counts["uploading"] + counts["uploaded"] == len(uids)
    w = m.wait(timeout=2)
    assert w.returncode == 3  # timeout: still pending
    m.unmount()
    assert sum(store_uids(emulator).values()) == 0

    m2 = m.remount(commit_delay=1)  # same cache_dir
    assert listed_files(m2.import_dir()) == sorted(uids)  # from the journal
    w = m2.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m2.log())
    assert_all_imported_once(emulator, uids.values())
    assert listed_files(m2.import_dir()) == sorted(uids)  # remembered
    assert {file_state(os.path.join(m2.import_dir(), p)) for p in uids} == {"imported"}


def test_import_unlink_and_rename_of_pending_files(mounts, emulator, workdir):
    m = mounts(commit_delay=3)
    a = os.path.join(workdir, "a.dcm")
    b = os.path.join(workdir, "b.dcm")
    uid_a = write_instance(a, generate_uid(), generate_uid(), 1)
    uid_b = write_instance(b, generate_uid(), generate_uid(), 2)
    shutil.copy(a, os.path.join(m.import_dir(), "a.dcm"))
    shutil.copy(b, os.path.join(m.import_dir(), "b.dcm"))
    os.mkdir(os.path.join(m.import_dir(), "sub"))
    os.rename(os.path.join(m.import_dir(), "b.dcm"), os.path.join(m.import_dir(), "sub", "b2.dcm"))
    os.unlink(os.path.join(m.import_dir(), "a.dcm"))
    assert listed_files(m.import_dir()) == ["sub/b2.dcm"]
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    got = store_uids(emulator)
    assert got[uid_b] == 1
    assert got[uid_a] == 0  # withdrawn before its batch was committed


def test_wait_outside_a_store_is_a_usage_error(workdir):
    r = subprocess.run([dicomfs_binary(), "wait", workdir], capture_output=True, text=True)
    assert r.returncode == 2
    assert "not inside a dicomfs store" in r.stderr


def test_import_full_cache_disk_gives_enospc(mount_factory, emulator, workdir):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the cache directory needs root")
    cache = os.path.join(workdir, "smallcache")
    os.makedirs(cache)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", cache],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        m = ImportMount(mount_factory(options=("commit_delay=1", "cache_dir=" + cache)))
        big = os.path.join(workdir, "big.dcm")
        ds_uid = write_instance(big, generate_uid(), generate_uid(), 1)
        with open(big, "ab") as f:  # pad: trailing bytes after the data set
            f.write(b"\0" * (3 << 20))
        r = subprocess.run(["cp", big, m.import_dir()], capture_output=True, text=True)
        assert r.returncode != 0
        assert "No space left on device" in r.stderr, r.stderr
        assert wait_listing(m.import_dir(), []) == []  # never silently accepted
        small = os.path.join(workdir, "small.dcm")
        uid = write_instance(small, generate_uid(), generate_uid(), 2)
        r = subprocess.run(["cp", small, m.import_dir()], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        w = m.wait()
        assert w.returncode == 0, (w.stdout, w.stderr, m.log())
        got = store_uids(emulator)
        assert got[uid] == 1 and got[ds_uid] == 0
        m.unmount()
    finally:
        subprocess.run(["umount", "-l", cache], capture_output=True)


def set_faults(emu, **rates):
    q = urllib.parse.urlencode(rates)
    status, _, body = emu.request("POST", "/_emulator/faults?" + q, auth=False)
    assert status == 200, body


def test_import_killed_daemon_with_faults_loses_nothing(mount_factory, emulator, workdir):
    """kill -9 while uploads run against a faulty server, remount: every file
    whose cp succeeded is imported exactly once."""
    src = os.path.join(workdir, "src")
    uids = make_tree(src, studies=2, series=2, instances=5)
    m = ImportMount(mount_factory(options=("commit_delay=1", "uploads=4")))
    set_faults(emulator, fail_rate=0.3, reset_rate=0.05)
    r = subprocess.run(["cp", "-r", src + "/.", m.import_dir()], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m.m.proc.kill()  # SIGKILL by PID: no clean shutdown, uploads cut off
    m.m.proc.wait()
    m.m.stop()  # fusermount3 -u of the dead mount
    # The fixture flags unclean exits; this one was on purpose.
    assert m.m.exit_codes[-1] == -9
    m.m.exit_codes.pop()
    set_faults(emulator, fail_rate=0.1, reset_rate=0.02)
    m.remount(commit_delay=1)
    # From the journal: whatever is not imported yet is listed again.
    assert set(listed_files(m.import_dir())) <= set(uids)
    w = m.wait(timeout=180)
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    set_faults(emulator, fail_rate=0, reset_rate=0)
    assert_all_imported_once(emulator, uids.values())
    assert listed_files(m.import_dir()) == sorted(uids)  # every accepted file, remembered
    assert {file_state(os.path.join(m.import_dir(), p)) for p in uids} == {"imported"}


def test_import_hostile_file_names(mounts, emulator, workdir):
    names = ["new\nline.dcm", "-leading-dash.dcm", "tab\there.dcm", "L" * 251 + ".dcm",
             "\u00fcn\u00ef\u00e7\u00f8d\u00e9 \u540d\u524d.dcm", "semi;colon 'quote\".dcm"]
    src = os.path.join(workdir, "src")
    uids = {}
    for i, n in enumerate(names):
        uids[n] = write_instance(os.path.join(src, n), generate_uid(), generate_uid(), i)
    m = mounts(commit_delay=1)
    r = subprocess.run(["cp", "-r", src + "/.", m.import_dir()], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(m.import_dir())) == sorted(names)
    for n in names:
        assert os.path.getsize(os.path.join(m.import_dir(), n)) == \
            os.path.getsize(os.path.join(src, n))
    # The cache holds random ids only, never the names. A spool file goes as
    # soon as its upload is verified (bounded cache), which with fast uploads
    # can be before this listing: every file is still spooled or past its
    # upload (states read after the listing, so a file released in between
    # counts once either way).
    spooled = os.listdir(os.path.join(m.cache_dir, "spool"))
    assert len(spooled) <= len(names)
    assert all(len(f) == 32 and all(c in "0123456789abcdef" for c in f) for f in spooled)
    past_upload = sum(file_state(os.path.join(m.import_dir(), n))
                      in ("uploaded", "importing", "imported") for n in names)
    assert len(spooled) + past_upload >= len(names), (spooled, past_upload)
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    assert_all_imported_once(emulator, uids.values())


def test_import_overwrite_pending_file_revalidates(mounts, emulator, workdir):
    a = os.path.join(workdir, "a.dcm")
    b = os.path.join(workdir, "b.dcm")
    uid_a = write_instance(a, generate_uid(), generate_uid(), 1)
    uid_b = write_instance(b, generate_uid(), generate_uid(), 2)
    m = mounts(commit_delay=3)
    target = os.path.join(m.import_dir(), "x.dcm")
    assert subprocess.run(["cp", a, target]).returncode == 0
    time.sleep(1)  # let the first version upload
    r = subprocess.run(["cp", b, target], capture_output=True, text=True)  # O_TRUNC rewrite
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(target) == os.path.getsize(b)
    with open(target, "rb") as f1, open(b, "rb") as f2:
        assert f1.read() == f2.read()
    # A rewrite with junk fails close() and the name goes away.
    junk = os.path.join(workdir, "junk.dcm")
    with open(junk, "wb") as f:
        f.write(b"\0" * 500)
    assert subprocess.run(["cp", a, os.path.join(m.import_dir(), "y.dcm")]).returncode == 0
    r = subprocess.run(["cp", junk, os.path.join(m.import_dir(), "y.dcm")], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r.stderr
    # y.dcm is dropped; its trace stays until removed
    assert wait_listing(m.import_dir(), ["x.dcm", "y.dcm"]) == ["x.dcm", "y.dcm"]
    os.unlink(os.path.join(m.import_dir(), "y.dcm"))
    w = m.wait()
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    got = store_uids(emulator)
    assert got[uid_b] == 1
    assert got[uid_a] == 0  # neither the overwritten nor the withdrawn copy


# ---------------------------------------------------------------- durability policy

def spool_fdatasyncs(mount, action):
    """Runs action() with strace attached to the daemon and returns the
    fdatasync/fsync calls made on spool files (strace -y names the path)."""
    out = tempfile.mktemp(prefix="dicomfs-strace.")
    tracer = subprocess.Popen(["strace", "-f", "-y", "-e", "trace=fdatasync,fsync", "-o", out,
                               "-p", str(mount.m.proc.pid)], stderr=subprocess.PIPE)
    try:
        # strace says "Process N attached" per thread once it is in place.
        deadline = time.time() + 10
        seen = b""
        while b"attached" not in seen and time.time() < deadline:
            seen += tracer.stderr.read1(4096)
        assert b"attached" in seen, seen
        action()
        time.sleep(0.3)  # let the FUSE threads' calls reach the trace
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    with open(out) as f:
        calls = [line for line in f if "/spool/" in line and "sync(" in line]
    os.unlink(out)
    return calls


def test_close_durability_policy(mounts, workdir, mount_factory):
    """Default: close() puts the data and its journal record in the cache
    filesystem (a killed daemon loses nothing: test_crash.py) without an
    fdatasync of the spool file; fsync() does sync it. -o sync_close syncs at
    every close(). Checked on the daemon's own system calls."""
    src = os.path.join(workdir, "a.dcm")
    write_instance(src, generate_uid(), generate_uid(), 1)
    m = mounts(commit_delay=30)
    calls = spool_fdatasyncs(m, lambda: subprocess.run(
        ["cp", src, os.path.join(m.import_dir(), "a.dcm")], check=True))
    assert calls == [], calls

    def write_with_fsync():
        with open(src, "rb") as f:
            data = f.read()
        fd = os.open(os.path.join(m.import_dir(), "b.dcm"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    calls = spool_fdatasyncs(m, write_with_fsync)
    assert any("fdatasync(" in c for c in calls), calls
    assert sorted(os.listdir(m.import_dir())) == ["a.dcm", "b.dcm"]

    s = ImportMount(mount_factory(options=("commit_delay=30", "sync_close")))
    calls = spool_fdatasyncs(s, lambda: subprocess.run(
        ["cp", src, os.path.join(s.import_dir(), "c.dcm")], check=True))
    assert any("fdatasync(" in c for c in calls), calls
