"""STORE/export/: filter files start exports; NAME.out/ shows the result."""
import errno
import json
import os
import re
import subprocess
import tempfile
import time
import uuid

import pytest


def uid(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def make_instance(path, study, series, instance):
    """A small MONOCHROME2 image with pydicom (independent of dicomfs)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = "Test^Export"
    ds.PatientID = "EXP1"
    ds.Modality = "OT"
    ds.Rows = 8
    ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(64, dtype=np.uint8) * 3).tobytes()
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.save_as(path, write_like_original=False)  # pydicom 2.x: full Part-10 file


@pytest.fixture
def filled_store(hc_api, tmp_path):
    """A store holding 2 studies x 1 series x 2 instances, imported via the API."""
    from pydicom.uid import generate_uid
    ds = hc_api.create_dataset(uid("exds"))
    store = hc_api.create_store(ds, uid("exst"))
    src = f"src-{uuid.uuid4().hex[:8]}"
    files = {}  # (study, series, instance) -> bytes
    for _ in range(2):
        study, series = generate_uid(), generate_uid()
        for _ in range(2):
            inst = generate_uid()
            p = tmp_path / f"{inst}.dcm"
            make_instance(str(p), study, series, inst)
            data = p.read_bytes()
            files[(study, series, inst)] = data
            hc_api.upload("staging", f"{src}/{inst}.dcm", data, "application/dicom")
    op = hc_api.import_gcs(store, f"gs://staging/{src}/**")
    done = hc_api.wait_operation(op)
    assert "error" not in done, done
    return ds, store, files


def ids(ds, store):
    return ds.rsplit("/", 1)[1], store.rsplit("/", 1)[1]


def write_filter(path, text):
    with open(path, "w") as f:
        f.write(text)


def wait_until(cond, timeout=10, what="condition"):
    """The export starts at RELEASE, which the kernel sends after close()
    returned: what it does shows a moment later."""
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def store_ops(m, ds_id, st_id):
    d = m.path(ds_id, st_id, "operations")
    return {n: json.loads(open(os.path.join(d, n), "rb").read()) for n in os.listdir(d)}


def wait_store_ops_done(m, ds_id, st_id, count, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ops = store_ops(m, ds_id, st_id)
        if len(ops) >= count and all(o.get("done") for o in ops.values()):
            return ops
        time.sleep(0.3)
    raise TimeoutError(f"store operations not done: {store_ops(m, ds_id, st_id)}")


def walk_files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = p
    return out


def test_filtered_export_one_study(dicomfs_mount, hc_api, filled_store):
    ds, store, files = filled_store
    ds_id, st_id = ids(ds, store)
    m = dicomfs_mount
    study = sorted({k[0] for k in files})[0]
    filt = f"/studies/{study}\n"
    write_filter(m.path(ds_id, st_id, "export", "dicom", "one"), filt)
    ops = wait_store_ops_done(m, ds_id, st_id, 1)
    (op,) = ops.values()
    assert "error" not in op, op
    assert "one" in os.listdir(m.path(ds_id, st_id, "export", "dicom"))
    assert "one.out" in os.listdir(m.path(ds_id, st_id, "export", "dicom"))
    with open(m.path(ds_id, st_id, "export", "dicom", "one")) as f:
        assert f.read() == filt
    got = walk_files(m.path(ds_id, st_id, "export", "dicom", "one.out"))
    want = {f"{s}/{se}/{i}.dcm": data for (s, se, i), data in files.items() if s == study}
    assert sorted(got) == sorted(want)
    for rel, p in got.items():
        with open(p, "rb") as f:
            assert f.read() == want[rel], rel
        assert os.stat(p).st_size == len(want[rel])
    # the filter was uploaded beside the staging prefix, the objects went to
    # the default export destination gs://staging/dicomfs-exports/DS/STORE/FMT/NAME/RUN/
    # (one prefix per start, RUN listed in NAME.runs/)
    (fobj,) = hc_api.list_objects("staging", f"dicomfs/filters/{ds_id}/{st_id}/dicom/")
    assert fobj["name"].rsplit("/", 1)[1].startswith("one-")
    assert hc_api.download("staging", fobj["name"]) == filt.encode()
    (run,) = os.listdir(m.path(ds_id, st_id, "export", "dicom", "one.runs"))
    exported = {o["name"] for o in hc_api.list_objects(
        "staging", f"dicomfs-exports/{ds_id}/{st_id}/dicom/one/")}
    assert exported == {f"dicomfs-exports/{ds_id}/{st_id}/dicom/one/{run}/{r}" for r in want}


def test_empty_filter_exports_whole_store(dicomfs_mount, filled_store):
    ds, store, files = filled_store
    ds_id, st_id = ids(ds, store)
    m = dicomfs_mount
    write_filter(m.path(ds_id, st_id, "export", "dicom", "all"), "")
    wait_store_ops_done(m, ds_id, st_id, 1)
    got = walk_files(m.path(ds_id, st_id, "export", "dicom", "all.out"))
    want = {f"{s}/{se}/{i}.dcm": data for (s, se, i), data in files.items()}
    assert sorted(got) == sorted(want)
    for rel, p in got.items():
        with open(p, "rb") as f:
            assert f.read() == want[rel], rel


def test_bad_filter_fails_close_and_starts_nothing(dicomfs_mount, hc_api, filled_store):
    ds, store, _ = filled_store
    ds_id, st_id = ids(ds, store)
    m = dicomfs_mount
    before = len(hc_api.list_operations(ds))
    path = m.path(ds_id, st_id, "export", "dicom", "bad")
    with pytest.raises(OSError) as ei:
        write_filter(path, "/studies/1.2.3\n/studies/not-a-uid\n")
    assert ei.value.errno == errno.EINVAL
    # cp reports it the way users see it
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as t:
        t.write("/series/1.2\n")
    try:
        p = subprocess.run(["cp", t.name, path], capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(t.name)
    assert p.returncode != 0
    assert "Invalid argument" in p.stderr
    # refused at the release, nothing starts; the refusal stays visible
    wait_until(lambda: os.path.exists(path + ".out/ERROR"), what="bad filter refused")
    assert os.listdir(m.path(ds_id, st_id, "operations")) == []
    assert len(hc_api.list_operations(ds)) == before
    assert "export/dicom/bad: line 2, column" in m.log_text()


def test_png_export(dicomfs_mount, filled_store):
    ds, store, files = filled_store
    ds_id, st_id = ids(ds, store)
    m = dicomfs_mount
    write_filter(m.path(ds_id, st_id, "export", "png", "pics"), "")
    ops = wait_store_ops_done(m, ds_id, st_id, 1)
    assert all("error" not in o for o in ops.values()), ops
    got = walk_files(m.path(ds_id, st_id, "export", "png", "pics.out"))
    assert len(got) == len(files)
    for rel, p in got.items():
        assert rel.endswith(".png")
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_filter_survives_remount(dicomfs_mount, filled_store):
    ds, store, files = filled_store
    ds_id, st_id = ids(ds, store)
    m = dicomfs_mount
    study = sorted({k[0] for k in files})[1]
    filt = f"/studies/{study}\r\n"
    write_filter(m.path(ds_id, st_id, "export", "raw", "keep"), filt)
    wait_store_ops_done(m, ds_id, st_id, 1)
    m.remount()
    with open(m.path(ds_id, st_id, "export", "raw", "keep"), newline="") as f:
        assert f.read() == filt
    assert len(os.listdir(m.path(ds_id, st_id, "operations"))) == 1


def test_odd_filter_names_refused(dicomfs_mount, hc_api):
    """NAME.out and NAME.runs are result folders, never filters; editors'
    scratch names are private files that start nothing (tests/integration/
    test_tools.py)."""
    m = dicomfs_mount
    before = len(hc_api.list_operations("projects/test-project/locations/us-central1/datasets/ds"))
    d = m.path("ds", "store", "export", "dicom")
    for name in ("x.out", "x.runs"):
        with pytest.raises(OSError) as ei:
            write_filter(os.path.join(d, name), "")
        assert ei.value.errno == errno.EINVAL, name
    assert os.listdir(d) == []
    after = len(hc_api.list_operations("projects/test-project/locations/us-central1/datasets/ds"))
    assert after == before


def set_faults(emulator, **kw):
    q = "&".join(f"{k}={v}" for k, v in kw.items())
    status, _, body = emulator.request("POST", f"/_emulator/faults?{q}", auth=False)
    assert status == 200, body


def test_export_under_server_faults(dicomfs_mount, emulator, filled_store):
    """429/500/503 answers and dropped connections on a third of the requests:
    the client's retries hide them; results are exact."""
    ds, store, files = filled_store
    ds_id, st_id = ids(ds, store)
    m = dicomfs_mount
    study = sorted({k[0] for k in files})[0]
    set_faults(emulator, fail_rate=0.3, reset_rate=0.05)
    try:
        write_filter(m.path(ds_id, st_id, "export", "dicom", "f"), f"/studies/{study}\n")
        wait_store_ops_done(m, ds_id, st_id, 1, timeout=120)
        got = walk_files(m.path(ds_id, st_id, "export", "dicom", "f.out"))
        want = {f"{s}/{se}/{i}.dcm": d for (s, se, i), d in files.items() if s == study}
        assert sorted(got) == sorted(want)
        for rel, p in got.items():
            with open(p, "rb") as f:
                assert f.read() == want[rel], rel
        for n in os.listdir(m.path(ds_id, "operations")):
            json.loads(open(m.path(ds_id, "operations", n), "rb").read())
        faults = emulator.stats()["faults"]
        assert faults["http429"] + faults["http500"] + faults["http503"] + faults["resets"] > 0
    finally:
        set_faults(emulator, fail_rate=0, reset_rate=0)


def test_malformed_responses_give_eio_not_a_crash(dicomfs_mount, emulator, filled_store):
    ds, store, _ = filled_store
    ds_id, st_id = ids(ds, store)
    m = dicomfs_mount
    set_faults(emulator, malformed_rate=1)
    try:
        errors = 0
        for _ in range(3):
            try:
                for n in os.listdir(m.path(ds_id, "operations")):
                    open(m.path(ds_id, "operations", n), "rb").read()
            except OSError as e:
                # EACCES: the token endpoint's answers are garbled too
                assert e.errno in (errno.EIO, errno.ENOENT, errno.EACCES), e
                errors += 1
            time.sleep(2.1)  # past the listing caches
        assert errors > 0
    finally:
        set_faults(emulator, malformed_rate=0)
    # the daemon is still serving
    assert "operations" in os.listdir(m.path(ds_id))


def test_out_is_empty_until_the_export_is_done(emulator_factory, tmp_path):
    from mount_fixture import ApiClient, DicomfsMount
    from pydicom.uid import generate_uid
    emu = emulator_factory("--lro-delay", "3000")
    api = ApiClient(emu)
    study, series, inst = generate_uid(), generate_uid(), generate_uid()
    p = tmp_path / "i.dcm"
    make_instance(str(p), study, series, inst)
    api.upload("staging", "slow/i.dcm", p.read_bytes(), "application/dicom")
    api.wait_operation(api.import_gcs(
        "projects/test-project/locations/us-central1/datasets/ds/dicomStores/store",
        "gs://staging/slow/**"))
    work = tmp_path / "m"
    work.mkdir()
    m = DicomfsMount(emu, str(work))
    m.start()
    try:
        out = m.path("ds", "store", "export", "dicom", "s.out")
        write_filter(m.path("ds", "store", "export", "dicom", "s"), "")
        ops = wait_until(lambda: store_ops(m, "ds", "store"), what="export started")
        assert len(ops) == 1 and not list(ops.values())[0].get("done")
        assert os.listdir(out) == []
        wait_store_ops_done(m, "ds", "store", 1)
        got = walk_files(out)
        assert sorted(got) == [f"{study}/{series}/{inst}.dcm"]
        with open(got[f"{study}/{series}/{inst}.dcm"], "rb") as f:
            assert f.read() == p.read_bytes()
    finally:
        m.stop()
    assert not m.problems(), m.log_text()[-3000:]


# ---- a start that fails: the filter stays, NAME.out/ERROR and status say why

def gcs_bucket(emu, method, name):
    """Creates (POST) or deletes (DELETE) a bucket through the emulator's
    Cloud Storage JSON API, as gsutil mb / rb would."""
    if method == "POST":
        status, _, body = emu.request("POST", "/storage/v1/b?project=test-project",
                                      json.dumps({"name": name}).encode(),
                                      {"Content-Type": "application/json"})
    else:
        status, _, body = emu.request("DELETE", f"/storage/v1/b/{name}")
    assert status in (200, 204), (method, name, status, body)


def status_lines(m, ds_id, st_id):
    with open(m.path(ds_id, st_id, "status")) as f:
        return f.read().splitlines()


def test_failed_start_keeps_filter_with_error_and_status_line(emulator, mount_factory):
    """The staging bucket disappears after the mount (Cloud Storage answers
    404 "The specified bucket does not exist." to the filter upload, as the
    real service does): close() has already returned 0, so the failure must
    stay visible: the filter stays listed, NAME.out/ERROR says why, STORE/status
    has a "failed:" line, all of it survives a remount, and rm clears it."""
    gcs_bucket(emulator, "POST", "stage2")
    m = mount_factory(staging="gs://stage2/p", options=["export_to=gs://staging/exp"])
    gcs_bucket(emulator, "DELETE", "stage2")
    d = m.path("ds", "store", "export", "dicom")
    filt = "/studies/1.2.840.99.1\n"
    t0 = time.time()
    write_filter(os.path.join(d, "lost"), filt)  # close() succeeds: the start comes later
    err_path = os.path.join(d, "lost.out", "ERROR")
    wait_until(lambda: os.path.exists(err_path), timeout=60, what="lost.out/ERROR")

    def check():
        assert sorted(os.listdir(d)) == ["lost", "lost.out"]
        assert os.listdir(os.path.join(d, "lost.out")) == ["ERROR"]
        with open(os.path.join(d, "lost")) as f:
            assert f.read() == filt
        with open(err_path) as f:
            text = f.read()
        assert os.stat(err_path).st_size == len(text.encode())
        lines = text.splitlines()
        assert lines[0].startswith("time: ")
        stamp = time.mktime(time.strptime(lines[0][6:], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert t0 - 2 <= stamp <= time.time() + 2, lines[0]
        assert lines[1] == "filter: export/dicom/lost"
        assert lines[2].startswith("reason: uploading the filter to gs://stage2/p/filters/"
                                   "ds/store/dicom/lost-"), lines[2]
        assert "The specified bucket does not exist." in lines[2]
        assert "HTTP 404 NOT_FOUND" in lines[2]
        failed = [ln for ln in status_lines(m, "ds", "store") if ln.startswith("failed: export/")]
        assert failed == ["failed: export/dicom/lost: " + lines[2][len("reason: "):]]
        # it is no import failure: the import counter stays 0
        assert "failed: 0" in status_lines(m, "ds", "store")
        assert os.listdir(m.path("ds", "store", "operations")) == []
        return text

    before = check()
    assert any("ds/store/export/dicom/lost: the export did not start" in ln and
               "The specified bucket does not exist." in ln for ln in m.log_text().splitlines())
    # A mount needs its staging bucket: recreated, which retries nothing by
    # itself: the failure stays until the filter is written again or removed.
    gcs_bucket(emulator, "POST", "stage2")
    m.remount()
    assert check() == before
    os.unlink(os.path.join(d, "lost"))
    assert os.listdir(d) == []
    assert not os.path.exists(os.path.join(d, "lost.out"))
    assert not [ln for ln in status_lines(m, "ds", "store") if ln.startswith("failed: export/")]


def test_failed_start_retried_by_writing_again(emulator, mount_factory):
    """Writing a failed filter again starts it again: still failing, ERROR is
    renewed; once the cause is fixed, the export starts and ERROR is gone."""
    gcs_bucket(emulator, "POST", "stage2")
    m = mount_factory(staging="gs://stage2/p", options=["export_to=gs://staging/exp"])
    gcs_bucket(emulator, "DELETE", "stage2")
    d = m.path("ds", "store", "export", "dicom")
    err_path = os.path.join(d, "again.out", "ERROR")
    write_filter(os.path.join(d, "again"), "/studies/1.2.840.99.2\n")
    wait_until(lambda: os.path.exists(err_path), timeout=60, what="again.out/ERROR")
    first = open(err_path).read()
    time.sleep(1.1)  # a new time stamp
    write_filter(os.path.join(d, "again"), "/studies/1.2.840.99.3\n")
    wait_until(lambda: open(err_path).read() != first, timeout=60, what="ERROR renewed")
    assert m.log_text().count("ds/store/export/dicom/again: the export did not start") == 2
    gcs_bucket(emulator, "POST", "stage2")
    write_filter(os.path.join(d, "again"), "/studies/1.2.840.99.3\n")
    ops = wait_until(lambda: store_ops(m, "ds", "store"), timeout=60, what="export started")
    assert len(ops) == 1
    wait_until(lambda: not os.path.exists(err_path), what="ERROR cleared")
    assert sorted(os.listdir(d)) == ["again", "again.out", "again.runs"]
    assert "ERROR" not in os.listdir(os.path.join(d, "again.out"))
    assert not [ln for ln in status_lines(m, "ds", "store") if ln.startswith("failed: export/")]


def test_transient_start_failure_still_exports(emulator_factory, tmp_path):
    """The export call answers 429/500/503 for a while: the client's retries
    ride it out, the export runs and no ERROR appears."""
    from mount_fixture import ApiClient, DicomfsMount
    from pydicom.uid import generate_uid
    store = "projects/test-project/locations/us-central1/datasets/ds/dicomStores/store"
    emu = emulator_factory("--fault-paths", f"/v1beta1/{store}:export,/v1/{store}:export")
    api = ApiClient(emu)
    study, series, inst = generate_uid(), generate_uid(), generate_uid()
    p = tmp_path / "i.dcm"
    make_instance(str(p), study, series, inst)
    api.upload("staging", "tr/i.dcm", p.read_bytes(), "application/dicom")
    api.wait_operation(api.import_gcs(store, "gs://staging/tr/**"))
    work = tmp_path / "m"
    work.mkdir()
    m = DicomfsMount(emu, str(work))
    m.start()
    try:
        set_faults(emu, fail_rate=1)
        try:
            write_filter(m.path("ds", "store", "export", "dicom", "tr"), f"/studies/{study}\n")

            def faulted():
                f = emu.stats()["faults"]
                return f["http429"] + f["http500"] + f["http503"]
            wait_until(lambda: faulted() > 0, timeout=30, what="a faulted export call")
        finally:
            set_faults(emu, fail_rate=0)
        ops = wait_store_ops_done(m, "ds", "store", 1)
        assert all("error" not in o for o in ops.values()), ops
        out = m.path("ds", "store", "export", "dicom", "tr.out")
        got = walk_files(out)
        assert sorted(got) == [f"{study}/{series}/{inst}.dcm"]
        with open(got[f"{study}/{series}/{inst}.dcm"], "rb") as f:
            assert f.read() == p.read_bytes()
        assert "ERROR" not in os.listdir(out)
        assert "the export did not start" not in m.log_text()
        assert not [ln for ln in status_lines(m, "ds", "store") if ln.startswith("failed:")
                    and not ln[8:].isdigit()]
    finally:
        m.stop()
    assert not m.problems(), m.log_text()[-3000:]


def test_export_call_refused_403(emulator_factory, tmp_path):
    """The export call itself is refused with 403 PERMISSION_DENIED (the
    mounting identity lacks healthcare.dicomStores.export; emulated by a
    fixed fault status on the :export path only): not retried, shown the
    same way, for a whole-store (empty) filter too."""
    from mount_fixture import DicomfsMount
    store = "projects/test-project/locations/us-central1/datasets/ds/dicomStores/store"
    emu = emulator_factory("--fault-paths", f"/v1beta1/{store}:export,/v1/{store}:export")
    work = tmp_path / "m"
    work.mkdir()
    m = DicomfsMount(emu, str(work))
    m.start()
    try:
        set_faults(emu, fail_rate=1, fail_status=403)
        d = m.path("ds", "store", "export", "png")
        write_filter(os.path.join(d, "all"), "")
        err_path = os.path.join(d, "all.out", "ERROR")
        wait_until(lambda: os.path.exists(err_path), timeout=60, what="all.out/ERROR")
        with open(err_path) as f:
            lines = f.read().splitlines()
        assert lines[1] == "filter: export/png/all"
        # each start has its own run prefix: .../png/all/RUN
        want = (rf"reason: starting the export of {re.escape(store)} to "
                r"gs://staging/dicomfs-exports/ds/store/png/all/\d{8}T\d{6}\.\d{3}Z failed: ")
        assert re.match(want, lines[2]), lines[2]
        assert lines[2].endswith("(HTTP 403 PERMISSION_DENIED)"), lines[2]
        assert emu.stats()["faults"]["http500"] == 1  # one call: a 403 is not retried
        assert sorted(os.listdir(d)) == ["all", "all.out"]
        with open(m.path("ds", "store", "status")) as f:
            failed = [ln for ln in f.read().splitlines() if ln.startswith("failed: export/")]
        assert failed == ["failed: export/png/all: " + lines[2][len("reason: "):]]
        set_faults(emu, fail_rate=0, fail_status=0)
        os.unlink(os.path.join(d, "all"))
        assert os.listdir(d) == []
        with open(m.path("ds", "store", "status")) as f:
            assert "failed: export/" not in f.read()
    finally:
        m.stop()
    assert not m.problems(), m.log_text()[-3000:]
