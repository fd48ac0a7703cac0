"""Shell redirections and dup'ed descriptors under import/ and export/.

FUSE sends FLUSH at every close(), also of a dup'ed descriptor. A shell
redirection `cmd > FILE` opens FILE (O_CREAT|O_TRUNC), dup2()s it onto fd 1
and closes the original: a FLUSH of the still empty file, before any write.
dicomfs must only validate at a flush (an empty import file is not DICOM, an
empty filter would mean "the whole store") and decide at the RELEASE, which
comes once after the last close: an import file that is still invalid is
dropped, an export starts once with the final filter.

Real mounts of the emulator (mount_fixture.py); DICOM files from pydicom
(dicom_samples.py).
"""
import errno
import json
import os
import subprocess
import time
import urllib.parse
import uuid

import pytest

pytest.importorskip("pydicom")
from dicom_samples import make_instance, make_tree  # noqa: E402
from mount_fixture import DICOMFS  # noqa: E402
from resilience_util import file_state  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

LOCATION = "projects/test-project/locations/us-central1"


def wait_until(cond, timeout=10, what="condition"):
    """RELEASE reaches dicomfs after close() returned: poll a moment."""
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def sh(script, *args):
    return subprocess.run(["sh", "-c", script, "sh"] + list(args), capture_output=True,
                          text=True, timeout=60)


def walk_files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = p
    return out


# ---------------------------------------------------------------- import/

def store_sops(emu, store):
    """SOP Instance UIDs in the store (QIDO-RS against the emulator)."""
    q = urllib.parse.urlencode({"limit": 1000, "includefield": "00080018"})
    status, _, body = emu.request("GET", f"/v1/{store}/dicomWeb/instances?{q}",
                                  headers={"Accept": "application/dicom+json"})
    assert status in (200, 204), (status, body[:300])
    page = json.loads(body) if status == 200 and body.strip() else []
    return [r["00080018"]["Value"][0] for r in page]


@pytest.fixture
def import_store(hc_api):
    ds_id, st_id = f"rd{uuid.uuid4().hex[:8]}", f"rs{uuid.uuid4().hex[:8]}"
    ds = hc_api.create_dataset(ds_id)
    store = hc_api.create_store(ds, st_id)
    return ds_id, st_id, store


def dicomfs_wait(store_dir, timeout=90):
    return subprocess.run([DICOMFS, "wait", store_dir, "--timeout", str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 30)


def test_cat_redirect_into_import_is_imported(dicomfs_mount, emulator, import_store, tmp_path):
    ds_id, st_id, store = import_store
    m = dicomfs_mount
    src = tmp_path / "a.dcm"
    sop = generate_uid()
    make_instance(str(src), generate_uid(), generate_uid(), sop)
    dst = m.path(ds_id, st_id, "import", "a.dcm")
    r = sh('cat "$1" > "$2"', str(src), dst)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    # the empty first flush did not drop it: it is there, whole
    assert os.listdir(m.path(ds_id, st_id, "import")) == ["a.dcm"]
    assert os.path.getsize(dst) == os.path.getsize(src)
    w = dicomfs_wait(m.path(ds_id, st_id))
    assert w.returncode == 0, (w.stdout, w.stderr, m.log_text()[-3000:])
    assert store_sops(emulator, store) == [sop]
    # Remembered after its import: listed, in state "imported".
    assert os.listdir(m.path(ds_id, st_id, "import")) == ["a.dcm"]
    assert file_state(dst) == "imported"
    assert "not a DICOM Part-10 file" not in m.log_text()


def test_dup_closed_before_writing_an_import_file(dicomfs_mount, emulator, import_store,
                                                  tmp_path):
    """The early close fails (the file is empty so far) but keeps the file:
    the writes through the other descriptor and its close() succeed."""
    ds_id, st_id, store = import_store
    m = dicomfs_mount
    src = tmp_path / "b.dcm"
    sop = generate_uid()
    make_instance(str(src), generate_uid(), generate_uid(), sop)
    fd = os.open(m.path(ds_id, st_id, "import", "b.dcm"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    dup = os.dup(fd)
    with pytest.raises(OSError) as ei:
        os.close(dup)
    assert ei.value.errno == errno.EINVAL
    os.write(fd, src.read_bytes())
    os.close(fd)
    w = dicomfs_wait(m.path(ds_id, st_id))
    assert w.returncode == 0, (w.stdout, w.stderr, m.log_text()[-3000:])
    assert store_sops(emulator, store) == [sop]


def test_cp_dev_null_into_import_still_fails(dicomfs_mount, import_store):
    ds_id, st_id, _ = import_store
    m = dicomfs_mount
    imp = m.path(ds_id, st_id, "import")
    r = subprocess.run(["cp", "/dev/null", os.path.join(imp, "empty.dcm")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr, r.stderr
    # dropped; an empty entry stays as the visible trace until removed
    status = m.path(ds_id, st_id, "status")
    wait_until(lambda: "rejected: import/empty.dcm: " in open(status).read(), what="trace")
    assert os.listdir(imp) == ["empty.dcm"]
    os.unlink(os.path.join(imp, "empty.dcm"))
    assert os.listdir(imp) == []
    assert wait_until(lambda: os.listdir(os.path.join(m.cache_dir, "spool")) == [],
                      what="spool file removed") is True
    # the what-and-where line, logged at the release
    assert f"{ds_id}/dicomStores/{st_id}/empty.dcm: not a DICOM Part-10 file: " in m.log_text()


# ---------------------------------------------------------------- export/

@pytest.fixture
def filled(hc_api, tmp_path):
    """A store of 2 studies x 1 series x 2 instances, imported via the API."""
    ds_id, st_id = f"xd{uuid.uuid4().hex[:8]}", f"xs{uuid.uuid4().hex[:8]}"
    ds = hc_api.create_dataset(ds_id)
    store = hc_api.create_store(ds, st_id)
    files = {}  # "STUDY/SERIES/SOP.dcm" -> bytes
    src = f"redir-{uuid.uuid4().hex[:8]}"
    for study, series, sop, path in make_tree(str(tmp_path / "src"), n_studies=2,
                                              n_instances=2):
        data = open(path, "rb").read()
        files[f"{study}/{series}/{sop}.dcm"] = data
        hc_api.upload("staging", f"{src}/{sop}.dcm", data, "application/dicom")
    done = hc_api.wait_operation(hc_api.import_gcs(store, f"gs://staging/{src}/**"))
    assert "error" not in done, done
    return ds, ds_id, st_id, files


def op_counts(m, hc_api, ds, ds_id, st_id):
    """(STORE/operations/ entries, the dataset's operations.list length)."""
    return (len(os.listdir(m.path(ds_id, st_id, "operations"))),
            len(hc_api.list_operations(ds)))


def wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before, timeout=60):
    want = (before[0] + 1, before[1] + 1)
    wait_until(lambda: op_counts(m, hc_api, ds, ds_id, st_id) >= want, what="export started")
    d = m.path(ds_id, st_id, "operations")
    wait_until(lambda: all(json.load(open(os.path.join(d, n))).get("done")
                           for n in os.listdir(d)), timeout=timeout, what="export done")
    time.sleep(1)  # room for a second, wrong start to show up
    assert op_counts(m, hc_api, ds, ds_id, st_id) == want


def check_out(m, ds_id, st_id, name, files, study):
    got = walk_files(m.path(ds_id, st_id, "export", "dicom", name + ".out"))
    want = {rel: data for rel, data in files.items() if rel.startswith(study + "/")}
    assert len(want) == 2
    assert sorted(got) == sorted(want)
    for rel, p in got.items():
        with open(p, "rb") as f:
            assert f.read() == want[rel], rel


def test_echo_redirect_starts_exactly_one_filtered_export(dicomfs_mount, hc_api, filled):
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    study = sorted(files)[0].split("/")[0]
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    one = m.path(ds_id, st_id, "export", "dicom", "one")
    r = sh('echo "/studies/$1" > "$2"', study, one)
    assert r.returncode == 0, r.stderr
    wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before)
    with open(one) as f:
        assert f.read() == f"/studies/{study}\n"
    check_out(m, ds_id, st_id, "one", files, study)
    # The same filter written again: nothing new is started.
    after = op_counts(m, hc_api, ds, ds_id, st_id)
    r = sh('echo "/studies/$1" > "$2"', study, one)
    assert r.returncode == 0, r.stderr
    time.sleep(1)
    assert op_counts(m, hc_api, ds, ds_id, st_id) == after


def test_dup_closed_before_writing_a_filter(dicomfs_mount, hc_api, filled):
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    study = sorted(files)[-1].split("/")[0]
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    fd = os.open(m.path(ds_id, st_id, "export", "dicom", "dup"),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    dup = os.dup(fd)
    os.close(dup)  # an empty filter is valid: this close succeeds, starts nothing
    os.write(fd, f"/studies/{study}\n".encode())
    os.close(fd)
    wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before)
    check_out(m, ds_id, st_id, "dup", files, study)


def test_bad_filter_through_a_redirect_starts_nothing(dicomfs_mount, hc_api, filled):
    ds, ds_id, st_id, _ = filled
    m = dicomfs_mount
    d = m.path(ds_id, st_id, "export", "dicom")
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    sh("printf '/studies/01.2\\n' > \"$1\"", os.path.join(d, "bad"))
    # refused at the release: kept with bad.out/ERROR until removed
    wait_until(lambda: os.path.exists(os.path.join(d, "bad.out", "ERROR")), what="bad refused")
    os.unlink(os.path.join(d, "bad"))
    # the same through Python: a dup'ed descriptor closed after the write
    fd = os.open(os.path.join(d, "bad2"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"/studies/1.2\n/studies/01.2\n")
    dup = os.dup(fd)
    for f in (dup, fd):
        with pytest.raises(OSError) as ei:
            os.close(f)
        assert ei.value.errno == errno.EINVAL
    wait_until(lambda: os.path.exists(os.path.join(d, "bad2.out", "ERROR")), what="bad2")
    os.unlink(os.path.join(d, "bad2"))
    time.sleep(1)
    assert op_counts(m, hc_api, ds, ds_id, st_id) == before
    assert os.listdir(d) == []
    log = m.log_text()
    line = "export/dicom/bad: line 1, column 10: UID component has a leading zero"
    assert log.count(line) == 1, log[-3000:]
    # once per content, though closed twice
    assert log.count("export/dicom/bad2: line 2, column 10: ") == 1, log[-3000:]
    assert "column 10: line 1" not in log and "column 10: line 2" not in log
