"""The Healthcare API half of dicomfs-emulator, checked over HTTP with pydicom files.

Uses the `emulator` fixtures (emulator_fixture.py): a store
test-project/us-central1/ds/store and a bucket `staging` exist at start.
"""
import email.parser
import io
import json
import os
import struct
import subprocess
import tempfile
import time
import urllib.parse
import zlib

import pydicom
import pytest
from pydicom.uid import generate_uid

import dicom_samples as samples

LOC = "projects/test-project/locations/us-central1"
DS = LOC + "/datasets/ds"
STORE = DS + "/dicomStores/store"
WEB = STORE + "/dicomWeb"


def call(emu, method, rest, body=None, version="v1", headers=None):
    data = None
    h = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    status, hdrs, raw = emu.request(method, "/%s/%s" % (version, rest), body=data, headers=h)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, parsed, raw, hdrs


def upload(emu, bucket, name, data):
    q = urllib.parse.urlencode({"uploadType": "media", "name": name})
    status, _, body = emu.request("POST", "/upload/storage/v1/b/%s/o?%s" % (bucket, q), body=data,
                                  headers={"Content-Type": "application/dicom"})
    assert status == 200, body


def download(emu, bucket, name):
    status, _, body = emu.request(
        "GET", "/storage/v1/b/%s/o/%s?alt=media" % (bucket, urllib.parse.quote(name, safe="")))
    return status, body


def list_objects(emu, bucket, prefix=""):
    q = urllib.parse.urlencode({"prefix": prefix})
    status, _, body = emu.request("GET", "/storage/v1/b/%s/o?%s" % (bucket, q))
    assert status == 200, body
    return sorted(i["name"] for i in json.loads(body).get("items", []))


def wait_op(emu, name, version="v1", timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        status, op, raw, _ = call(emu, "GET", name, version=version)
        assert status == 200, raw
        if op.get("done"):
            return op
        assert time.monotonic() < deadline, op
        time.sleep(0.05)


def import_files(emu, uri, version="v1"):
    status, body, raw, _ = call(emu, "POST", STORE + ":import", {"gcsSource": {"uri": uri}},
                                version=version)
    assert status == 200, raw
    assert body["name"].startswith(DS + "/operations/")
    assert body["name"].rsplit("/", 1)[1].isdigit()
    return wait_op(emu, body["name"], version)


def export(emu, dest, version="v1", **extra):
    req = {"gcsDestination": dict(dest)}
    req.update(extra)
    status, body, raw, _ = call(emu, "POST", STORE + ":export", req, version=version)
    assert status == 200, raw
    return wait_op(emu, body["name"], version)


def stage_tree(emu, tmp, prefix, n_studies=1, n_series=1, n_instances=1, **kw):
    tree = samples.make_tree(tmp, n_studies, n_series, n_instances, **kw)
    for study, series, sop, path in tree:
        with open(path, "rb") as f:
            upload(emu, "staging", "%s/%s/%s.dcm" % (prefix, study, sop), f.read())
    return tree


def qido(emu, path, **params):
    q = urllib.parse.urlencode(params, doseq=True)
    status, body, raw, hdrs = call(emu, "GET", WEB + "/" + path + ("?" + q if q else ""))
    return status, body, raw


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="dicomfs-hc-test.") as d:
        yield d


# ---------------------------------------------------------------- datasets, stores


def test_dataset_create_lro_get_list_delete(emulator):
    status, body, raw, _ = call(emulator, "POST", LOC + "/datasets?datasetId=new-ds.1", {})
    assert status == 200, raw
    assert set(body) == {"name"}
    op = wait_op(emulator, body["name"])
    assert op["done"] is True
    assert op["response"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.dataset.Dataset"
    assert op["response"]["name"] == LOC + "/datasets/new-ds.1"
    assert "timeZone" in op["response"]
    assert op["metadata"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
    assert op["metadata"]["apiMethodName"].endswith("DatasetService.CreateDataset")
    assert op["metadata"]["createTime"].endswith("Z") and op["metadata"]["endTime"].endswith("Z")
    assert "error" not in op

    status, body, _, _ = call(emulator, "GET", LOC + "/datasets/new-ds.1")
    assert status == 200 and body["name"] == LOC + "/datasets/new-ds.1"
    status, body, _, _ = call(emulator, "POST", LOC + "/datasets?datasetId=new-ds.1", {})
    assert status == 409 and body["error"]["status"] == "ALREADY_EXISTS"
    status, body, _, _ = call(emulator, "POST", LOC + "/datasets?datasetId=bad/id", {})
    assert status in (400, 404)
    status, body, _, _ = call(emulator, "POST", LOC + "/datasets?datasetId=bad%20id", {})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"

    status, body, _, _ = call(emulator, "GET", LOC + "/datasets?pageSize=1")
    assert status == 200 and len(body["datasets"]) == 1 and body["nextPageToken"]
    status, body2, _, _ = call(emulator, "GET",
                               LOC + "/datasets?pageSize=1&pageToken=" + body["nextPageToken"])
    names = {body["datasets"][0]["name"], body2["datasets"][0]["name"]}
    assert names == {DS, LOC + "/datasets/new-ds.1"}
    assert "nextPageToken" not in body2

    status, body, _, _ = call(emulator, "DELETE", LOC + "/datasets/new-ds.1")
    assert status == 200 and body == {}
    status, body, _, _ = call(emulator, "GET", LOC + "/datasets/new-ds.1")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


def test_store_create_get_list_conflict_missing_unknown_field(emulator):
    status, body, raw, _ = call(emulator, "POST", DS + "/dicomStores?dicomStoreId=s2", {})
    assert status == 200, raw
    assert body["name"] == DS + "/dicomStores/s2"
    status, body, _, _ = call(emulator, "GET", DS + "/dicomStores/s2")
    assert status == 200 and body["name"] == DS + "/dicomStores/s2"
    status, body, _, _ = call(emulator, "POST", DS + "/dicomStores?dicomStoreId=s2", {})
    assert status == 409
    status, body, _, _ = call(emulator, "GET", DS + "/dicomStores/nope")
    assert status == 404 and body["error"]["code"] == 404
    status, body, _, _ = call(emulator, "GET", DS + "/dicomStores")
    assert sorted(s["name"] for s in body["dicomStores"]) == [DS + "/dicomStores/s2", STORE]
    status, body, _, _ = call(emulator, "GET", DS + "/dicomStores?pageSize=1")
    assert len(body["dicomStores"]) == 1 and "nextPageToken" in body
    status, body, _, _ = call(emulator, "POST", DS + "/dicomStores?dicomStoreId=s3", {"x": 1})
    assert status == 400
    assert body["error"]["message"] == \
        'Invalid JSON payload received. Unknown name "x": Cannot find field.'
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    status, body, _, _ = call(emulator, "POST", STORE + ":import",
                              {"gcsSource": {"uri": "gs://staging/a", "bogus": 1}})
    assert status == 400 and "Unknown name \"bogus\" at 'gcs_source'" in body["error"]["message"]
    status, body, _, _ = call(emulator, "DELETE", DS + "/dicomStores/s2")
    assert status == 200 and body == {}
    status, _, _, _ = call(emulator, "GET", DS + "/dicomStores/s2")
    assert status == 404


# ---------------------------------------------------------------- import


def test_import_counters_errors_logs_duplicates(emulator, tmp):
    tree = stage_tree(emulator, tmp, "batch", n_studies=2, n_series=1, n_instances=2)
    upload(emulator, "staging", "batch/notes.txt", b"not dicom at all")
    op = import_files(emulator, "gs://staging/batch/**.dcm")
    assert op["metadata"]["counter"] == {"success": "4"}
    assert op["response"]["@type"] == \
        "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"
    assert op["metadata"]["apiMethodName"] == \
        "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"

    op = import_files(emulator, "gs://staging/batch/**")
    assert op["metadata"]["counter"] == {"success": "4", "failure": "1"}
    assert op["error"]["code"] == 3 and "response" not in op
    status, _, logs = emulator.request("GET", op["metadata"]["logsUrl"][len(emulator.url):])
    assert status == 200
    entries = [json.loads(l) for l in logs.decode().splitlines()]
    assert len(entries) == 1 and entries[0]["resource"] == "gs://staging/batch/notes.txt"

    # the first copy stays: a same-UID file with other content is ignored
    study, series, sop, path = tree[0]
    other = os.path.join(tmp, "dup.dcm")
    samples.make_instance(other, study, series, sop, patient_name="OTHER^NAME")
    upload(emulator, "staging", "dup/x.dcm", read(other))
    op = import_files(emulator, "gs://staging/dup/*.dcm")
    assert op["metadata"]["counter"] == {"success": "1"}
    status, _, body = emulator.request(
        "GET", "/v1/%s/studies/%s/series/%s/instances/%s" % (WEB, study, series, sop),
        headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert status == 200 and body == read(path)

    op = import_files(emulator, "gs://staging/nothing-here/*.dcm")
    assert op["error"]["code"] == 5
    status, body, _, _ = call(emulator, "POST", STORE + ":import",
                              {"gcsSource": {"uri": "gs://staging/a**/b"}})
    assert status == 400
    status, body, _, _ = call(emulator, "POST", STORE + ":import",
                              {"gcsSource": {"uri": "http://staging/a"}})
    assert status == 400

    status, body, _, _ = call(emulator, "GET", DS + "/operations?pageSize=2")
    assert status == 200 and len(body["operations"]) == 2 and body["nextPageToken"]


# ---------------------------------------------------------------- QIDO / WADO / STOW


def test_import_of_a_large_instance_with_a_long_header(emulator, tmp):
    # Import reads only a file's header (growing the read when the header
    # is longer than the first read) and links the object's bytes into the
    # store: the instance must still index every cached attribute and keep
    # its exact bytes after the Cloud Storage object is gone.
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    path = os.path.join(tmp, "big.dcm")
    samples.make_instance(path, study, series, sop, rows=1024, cols=1024, bits=16,
                          patient_name="LONG^HEADER", accession="ACC-BIG", instance_number=7)
    ds = pydicom.dcmread(path)
    refs = []
    for _ in range(3000):  # (0008,1140): some 300 KB before the last cached tags
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        item.ReferencedSOPInstanceUID = generate_uid()
        refs.append(item)
    ds.ReferencedImageSequence = Sequence(refs)
    ds.save_as(path, write_like_original=False)
    data = read(path)
    assert len(data) > 2 << 20
    upload(emulator, "staging", "long/big.dcm", data)
    assert import_files(emulator, "gs://staging/long/*.dcm")["metadata"]["counter"] == \
        {"success": "1"}
    # Study and instance results come from the attributes indexed at import
    # (includefield=all would read the file instead).
    status, body, _ = qido(emulator, "studies", StudyInstanceUID=study)
    assert status == 200 and len(body) == 1, body
    assert body[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "LONG^HEADER"}]}
    assert body[0]["00080050"] == {"vr": "SH", "Value": ["ACC-BIG"]}
    status, body, _ = qido(emulator, "instances", SOPInstanceUID=sop)
    assert status == 200 and len(body) == 1, body
    assert body[0]["00200013"]["Value"] == [7]
    assert body[0]["00280010"] == {"vr": "US", "Value": [1024]}

    status, _, _ = emulator.request("DELETE", "/storage/v1/b/staging/o/long%2Fbig.dcm")
    assert status == 204
    status, _, body = emulator.request(
        "GET", "/v1/%s/studies/%s/series/%s/instances/%s" % (WEB, study, series, sop),
        headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert status == 200 and body == data

    # Importing the same bytes again is a duplicate that counts as a success.
    upload(emulator, "staging", "long/again.dcm", data)
    assert import_files(emulator, "gs://staging/long/again.dcm")["metadata"]["counter"] == \
        {"success": "1"}


def test_import_header_that_ends_exactly_at_the_first_read(emulator, tmp):
    # The first header read is 64 KiB. A file whose elements happen to end
    # exactly there must not lose the indexed attributes that follow
    # (PatientName here): the read grows until the last indexed tag.
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    path = os.path.join(tmp, "edge.dcm")
    samples.make_instance(path, study, series, sop, rows=512, cols=512, bits=16,
                          patient_name="EDGE^CASE")
    ds = pydicom.dcmread(path)
    ds.add_new(0x00090010, "LO", "DICOMFS TEST")
    pad = 1000
    for _ in range(3):  # converges: the padding only moves what follows it
        ds.add_new(0x00091001, "OB", b"\0" * pad)
        ds.save_as(path, write_like_original=False)
        at = read(path).find(b"\x10\x00\x10\x00PN")
        pad += 65536 - at
    data = read(path)
    assert data.find(b"\x10\x00\x10\x00PN") == 65536
    upload(emulator, "staging", "edge/e.dcm", data)
    assert import_files(emulator, "gs://staging/edge/*.dcm")["metadata"]["counter"] == \
        {"success": "1"}
    status, body, _ = qido(emulator, "studies", StudyInstanceUID=study)
    assert status == 200 and len(body) == 1, body
    assert body[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "EDGE^CASE"}]}


def test_qido_wado_metadata(emulator, tmp):
    tree = stage_tree(emulator, tmp, "q", n_studies=3, n_series=2, n_instances=2)
    assert import_files(emulator, "gs://staging/q/**")["metadata"]["counter"] == {"success": "12"}
    studies = sorted({t[0] for t in tree})
    series = sorted({t[1] for t in tree})
    sops = sorted(t[2] for t in tree)

    status, body, _ = qido(emulator, "studies")
    assert status == 200
    assert sorted(s["0020000D"]["Value"][0] for s in body) == studies
    first = body[0]
    assert list(first) == sorted(first)
    assert first["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}
    assert first["00080020"] == {"vr": "DA", "Value": ["20240102"]}
    status, body, _ = qido(emulator, "series")
    assert sorted(s["0020000E"]["Value"][0] for s in body) == series
    assert "0020000D" not in body[0]
    status, body, _ = qido(emulator, "instances", includefield="0020000D,SeriesInstanceUID")
    assert sorted(s["00080018"]["Value"][0] for s in body) == sops
    assert all("0020000D" in i and "0020000E" in i for i in body)
    assert body[0]["00280010"] == {"vr": "US", "Value": [16]}
    assert body[0]["00200013"]["vr"] == "IS" and isinstance(body[0]["00200013"]["Value"][0], int)

    # paging
    got = []
    for off in range(0, 12, 5):
        status, page, _ = qido(emulator, "instances", limit=5, offset=off)
        got += [i["00080018"]["Value"][0] for i in page]
    assert sorted(got) == sops
    status, _, _ = qido(emulator, "instances", limit=50001)
    assert status == 400
    status, _, _ = qido(emulator, "studies", limit=5001)
    assert status == 400

    # match keys and hierarchy
    s0 = studies[0]
    status, body, _ = qido(emulator, "studies/%s/series" % s0)
    assert sorted(b["0020000E"]["Value"][0] for b in body) == \
        sorted({t[1] for t in tree if t[0] == s0})
    status, body, _ = qido(emulator, "instances", StudyInstanceUID=s0)
    assert len(body) == 4
    status, body, raw = qido(emulator, "studies", PatientName="NOBODY")
    assert status == 204 and raw == b""  # no match: 204 No Content, no body
    status, body, _ = qido(emulator, "studies", StudyDate="20240101-20240131")
    assert len(body) == 3
    status, body, _ = qido(emulator, "studies", StudyDate="20250101-")
    assert status == 204 and body is None
    status, body, _ = qido(emulator, "studies", includefield="all")
    assert body[0]["00201208"]["Value"] == [4]
    status, _, _ = qido(emulator, "studies", Bogus="1")
    assert status == 400

    # WADO: bytes as stored, multipart, metadata
    study, ser, sop, path = tree[0]
    inst = "%s/studies/%s/series/%s/instances/%s" % (WEB, study, ser, sop)
    status, hdrs, body = emulator.request(
        "GET", "/v1/" + inst, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert status == 200 and body == read(path)
    status, hdrs, body = emulator.request(
        "GET", "/v1/%s/studies/%s/series/%s" % (WEB, study, ser),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert status == 200
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + hdrs["Content-Type"].encode() + b"\r\n\r\n" + body)
    parts = [p.get_payload(decode=True) for p in msg.get_payload()]
    assert sorted(parts) == sorted(read(t[3]) for t in tree if t[1] == ser)
    status, _, body = emulator.request("GET", "/v1/" + inst + "/metadata")
    meta = json.loads(body)
    assert len(meta) == 1 and meta[0]["00080018"]["Value"] == [sop]
    uri = meta[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(emulator.url + "/v1/")
    status, _, px = emulator.request("GET", uri[len(emulator.url):],
                                     headers={"Accept": "application/octet-stream"})
    assert status == 200 and px == pydicom.dcmread(path).PixelData
    status, _, _ = emulator.request("GET", "/v1/" + inst[:-3] + "999/metadata")
    assert status == 404


def _multipart(parts, boundary="XXboundaryXX"):
    out = b""
    for p in parts:
        out += b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def test_stow_single_multipart_duplicates_delete(emulator, tmp):
    study = generate_uid()
    series = generate_uid()
    paths = []
    for k in range(3):
        p = os.path.join(tmp, "%d.dcm" % k)
        samples.make_instance(p, study, series, generate_uid(), instance_number=k)
        paths.append(p)
    status, hdrs, body = emulator.request("POST", "/v1/%s/studies" % WEB, body=read(paths[0]),
                                          headers={"Content-Type": "application/dicom",
                                                   "Accept": "application/dicom+json"})
    assert status == 200, body
    resp = json.loads(body)
    assert len(resp["00081199"]["Value"]) == 1
    assert "00081198" not in resp
    status, hdrs, body = emulator.request(
        "POST", "/v1/%s/studies/%s" % (WEB, study), body=_multipart([read(p) for p in paths[1:]]),
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XXboundaryXX'})
    assert status == 200, body
    assert hdrs["Content-Type"].startswith("application/dicom+xml")
    assert body.count(b"<Item") == 2
    status, body, _ = qido(emulator, "studies/%s/instances" % study)
    assert len(body) == 3

    # identical duplicate -> 200; differing duplicate -> 409 with a failed item
    status, _, _ = emulator.request("POST", "/v1/%s/studies" % WEB, body=read(paths[0]),
                                    headers={"Content-Type": "application/dicom"})
    assert status == 200
    sop0 = pydicom.dcmread(paths[0]).SOPInstanceUID
    changed = os.path.join(tmp, "changed.dcm")
    samples.make_instance(changed, study, series, sop0, patient_name="CHANGED^X")
    status, _, body = emulator.request("POST", "/v1/%s/studies" % WEB, body=read(changed),
                                       headers={"Content-Type": "application/dicom",
                                                "Accept": "application/dicom+json"})
    assert status == 409
    failed = json.loads(body)["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0x0110]
    assert failed[0]["00081155"]["Value"] == [sop0]

    # delete: instance synchronous, series as an LRO
    status, _, body = emulator.request(
        "DELETE", "/v1/%s/studies/%s/series/%s/instances/%s" % (WEB, study, series, sop0))
    assert status == 200 and json.loads(body) == {}
    status, body, _ = qido(emulator, "studies/%s/instances" % study)
    assert len(body) == 2
    status, body, raw, _ = call(emulator, "DELETE", "%s/studies/%s/series/%s" % (WEB, study, series))
    assert status == 200, raw
    op = wait_op(emulator, body["name"])
    assert "error" not in op and op["metadata"]["counter"] == {"success": "2"}
    status, body, _ = qido(emulator, "studies/%s/instances" % study)
    assert status == 204


# ---------------------------------------------------------------- export


def test_export_dicom_filters(emulator, tmp):
    tree = stage_tree(emulator, tmp, "e", n_studies=2, n_series=1, n_instances=2)
    import_files(emulator, "gs://staging/e/**")
    op = export(emulator, {"uriPrefix": "gs://staging/out/all/"})
    assert op["metadata"]["counter"] == {"success": "4"}
    assert op["response"]["@type"].endswith("v1.dicom.ExportDicomDataResponse")
    names = list_objects(emulator, "staging", "out/all/")
    assert names == sorted("out/all/%s/%s/%s.dcm" % t[:3] for t in tree)
    for t in tree:
        assert download(emulator, "staging", "out/all/%s/%s/%s.dcm" % t[:3])[1] == read(t[3])

    # no trailing slash on the prefix
    export(emulator, {"uriPrefix": "gs://staging/out/noslash",
                      "mimeType": "application/dicom; transfer-syntax=*"})
    assert len(list_objects(emulator, "staging", "out/noslash/")) == 4

    # v1 takes filterConfig too (the current v1 reference has it): a missing
    # filter object fails the operation, not the request
    status, body, _, _ = call(emulator, "POST", STORE + ":export", {
        "gcsDestination": {"uriPrefix": "gs://staging/x"},
        "filterConfig": {"resourcePathsGcsUri": "gs://staging/f.txt"}})
    assert status == 200, body
    assert wait_op(emulator, body["name"])["error"]["code"] == 5
    status, body, _, _ = call(emulator, "POST", STORE + ":export", {
        "gcsDestination": {"uriPrefix": "gs://staging/x", "mimeType": "text/plain"}})
    assert status == 400

    # v1beta1 filter: one study
    study = tree[0][0]
    upload(emulator, "staging", "filters/one.txt", ("/studies/%s\r\n" % study).encode())
    op = export(emulator, {"uriPrefix": "gs://staging/out/one"}, version="v1beta1",
                filterConfig={"resourcePathsGcsUri": "gs://staging/filters/one.txt"})
    assert op["metadata"]["@type"].endswith("v1beta1.OperationMetadata")
    assert op["metadata"]["counter"] == {"success": "2"}
    assert list_objects(emulator, "staging", "out/one/") == \
        sorted("out/one/%s/%s/%s.dcm" % t[:3] for t in tree if t[0] == study)

    upload(emulator, "staging", "filters/bad.txt",
           ("/studies/%s\n/studies/not-a-uid\n" % study).encode())
    op = export(emulator, {"uriPrefix": "gs://staging/out/bad"}, version="v1beta1",
                filterConfig={"resourcePathsGcsUri": "gs://staging/filters/bad.txt"})
    assert op["error"]["code"] == 3 and "line 2" in op["error"]["message"]
    op = export(emulator, {"uriPrefix": "gs://staging/out/bad"}, version="v1beta1",
                filterConfig={"resourcePathsGcsUri": "gs://staging/filters/missing.txt"})
    assert op["error"]["code"] == 5
    op = export(emulator, {"uriPrefix": "gs://no-such-bucket/x"})
    assert op["error"]["code"] == 5


def _png_info(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    return width, height, depth, color, raw


def _unfilter(raw, width, height, bpp):
    """Undoes PNG row filters (RFC 2083 6.3); bpp = bytes per pixel."""
    stride = width * bpp
    out, prev = bytearray(), bytearray(stride)
    pos = 0
    for _ in range(height):
        ftype, line = raw[pos], bytearray(raw[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        out += line
        prev = line
    return bytes(out)


def test_export_images_raw_and_transcode(emulator, tmp):
    cases = {}
    for key, kw in {"m8": dict(bits=8), "m16": dict(bits=16),
                    "rgb": dict(photometric="RGB"), "rgbp": dict(photometric="RGB", planar=1),
                    "impl": dict(transfer_syntax=samples.IMPLICIT_LE, bits=16),
                    "be": dict(transfer_syntax=samples.EXPLICIT_BE, bits=16)}.items():
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        p = os.path.join(tmp, key + ".dcm")
        samples.make_instance(p, study, series, sop, rows=12, cols=20, **kw)
        upload(emulator, "staging", "img/%s.dcm" % key, read(p))
        cases[key] = (study, series, sop, p)
    assert import_files(emulator, "gs://staging/img/*.dcm")["metadata"]["counter"] == \
        {"success": "6"}

    def obj(prefix, key, ext):
        s, se, i, _ = cases[key]
        st, data = download(emulator, "staging", "%s/%s/%s/%s%s" % (prefix, s, se, i, ext))
        assert st == 200, (prefix, key)
        return data

    op = export(emulator, {"uriPrefix": "gs://staging/png", "mimeType": "image/png"})
    assert "error" not in op, op
    w, h, depth, color, raw = _png_info(obj("png", "m8", ".png"))
    assert (w, h, depth, color) == (20, 12, 8, 0)
    ds = pydicom.dcmread(cases["m8"][3])
    assert _unfilter(raw, 20, 12, 1) == ds.pixel_array.tobytes()
    w, h, depth, color, raw = _png_info(obj("png", "m16", ".png"))
    assert (w, h, depth, color) == (20, 12, 16, 0)
    src16 = pydicom.dcmread(cases["m16"][3]).pixel_array.astype(">u2").tobytes()
    assert _unfilter(raw, 20, 12, 2) == src16
    w, h, depth, color, _ = _png_info(obj("png", "rgbp", ".png"))
    assert (w, h, depth, color) == (20, 12, 8, 2)

    op = export(emulator, {"uriPrefix": "gs://staging/jpg", "mimeType": "image/jpeg"})
    assert "error" not in op, op
    for key in ("m8", "m16", "rgb"):
        data = obj("jpg", key, ".jpg")
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"

    op = export(emulator, {"uriPrefix": "gs://staging/raw",
                           "mimeType": "application/octet-stream; transfer-syntax=*"})
    assert "error" not in op, op
    for key in ("m8", "m16", "rgb", "impl"):
        assert obj("raw", key, "") == pydicom.dcmread(cases[key][3]).PixelData

    op = export(emulator, {"uriPrefix": "gs://staging/ele",
                           "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"})
    assert "error" not in op, op
    for key in ("impl", "be", "m8"):
        data = obj("ele", key, ".dcm")
        ds = pydicom.dcmread(io.BytesIO(data))
        src = pydicom.dcmread(cases[key][3])
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.SOPInstanceUID == src.SOPInstanceUID
        assert ds.PatientName == src.PatientName
        assert (ds.pixel_array == src.pixel_array).all()


# ---------------------------------------------------------------- LRO timing, cancel, restart


def test_lro_delay_cancel_and_restart(emulator_factory, tmp):
    emu = emulator_factory("--lro-delay", "1500")
    tree = stage_tree(emu, tmp, "r", n_studies=1, n_series=1, n_instances=2)
    status, body, raw, _ = call(emu, "POST", STORE + ":import",
                                {"gcsSource": {"uri": "gs://staging/r/**"}})
    assert status == 200, raw
    status, op, _, _ = call(emu, "GET", body["name"])
    assert "done" not in op and "response" not in op and "error" not in op
    op = wait_op(emu, body["name"])
    assert op["metadata"]["counter"] == {"success": "2"}

    status, body, _, _ = call(emu, "POST", STORE + ":import",
                              {"gcsSource": {"uri": "gs://staging/r/**"}})
    status, empty, _, _ = call(emu, "POST", body["name"] + ":cancel", {})
    assert status == 200 and empty == {}
    op = wait_op(emu, body["name"])
    assert op["error"]["code"] == 1 and op["metadata"]["cancelRequested"] is True

    status, body, _, _ = call(emu, "POST", LOC + "/datasets?datasetId=kept", {})
    wait_op(emu, body["name"])
    status, _, raw, _ = call(emu, "POST", LOC + "/datasets/kept/dicomStores?dicomStoreId=st", {})
    assert status == 200, raw

    # an import still running at shutdown is resumed after the restart
    status, body, _, _ = call(emu, "POST", STORE + ":import",
                              {"gcsSource": {"uri": "gs://staging/r/**"}})
    running = body["name"]
    emu.restart()
    op = wait_op(emu, running)
    assert op["metadata"]["counter"] == {"success": "2"} and "response" in op
    status, body, _, _ = call(emu, "GET", DS + "/operations")
    assert len(body["operations"]) == 3
    status, body, _, _ = call(emu, "GET", LOC + "/datasets/kept/dicomStores/st")
    assert status == 200 and body["name"] == LOC + "/datasets/kept/dicomStores/st"
    status, body, _, _ = call(emu, "GET", LOC + "/datasets/kept/operations")
    assert [o["done"] for o in body["operations"]] == [True]
    status, body, _ = qido(emu, "instances")
    assert sorted(i["00080018"]["Value"][0] for i in body) == sorted(t[2] for t in tree)
    status, _, data = emu.request(
        "GET", "/v1/%s/studies/%s/series/%s/instances/%s" % ((WEB,) + tree[0][:3]),
        headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert status == 200 and data == read(tree[0][3])
    status, body, _, _ = call(emu, "GET", DS + "/dicomStores/store")
    assert status == 200


def test_export_compressed_and_multiframe(emulator, tmp):
    study, series = generate_uid(), generate_uid()
    comp, multi = generate_uid(), generate_uid()
    pc = os.path.join(tmp, "c.dcm")
    frags = [b"\xff\xd8fragment-one\xff\xd9", b"\xff\xd8fragment-two\xff\xd9"]
    samples.make_encapsulated(pc, study, series, comp, frags)
    pm = os.path.join(tmp, "m.dcm")
    samples.make_instance(pm, study, series, multi, frames=3, rows=4, cols=6)
    upload(emulator, "staging", "c/c.dcm", read(pc))
    upload(emulator, "staging", "c/m.dcm", read(pm))
    assert import_files(emulator, "gs://staging/c/*")["metadata"]["counter"] == {"success": "2"}

    # compressed source: as-stored export works, explicit-LE transcoding is a counted failure
    op = export(emulator, {"uriPrefix": "gs://staging/co",
                           "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"})
    assert op["metadata"]["counter"] == {"success": "1", "failure": "1"}
    assert op["error"]["code"] == 3
    status, _, logs = emulator.request("GET", op["metadata"]["logsUrl"][len(emulator.url):])
    assert comp.encode() in logs
    op = export(emulator, {"uriPrefix": "gs://staging/ca",
                           "mimeType": "application/octet-stream; transfer-syntax=*"})
    assert "error" not in op, op
    st, data = download(emulator, "staging", "ca/%s/%s/%s" % (study, series, comp))
    assert st == 200 and data == b"".join(frags)

    # multi-frame images: one object per frame
    op = export(emulator, {"uriPrefix": "gs://staging/mf", "mimeType": "image/png"})
    assert op["metadata"]["counter"] == {"success": "1", "failure": "1"}
    names = list_objects(emulator, "staging", "mf/")
    assert names == ["mf/%s/%s/%s/%d.png" % (study, series, multi, k) for k in (1, 2, 3)]
    w, h, depth, color, _ = _png_info(download(emulator, "staging", names[0])[1])
    assert (w, h) == (6, 4)


def test_wado_transcode_rendered_frames_includefield(emulator, tmp):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    p = os.path.join(tmp, "i.dcm")
    samples.make_instance(p, study, series, sop, transfer_syntax=samples.IMPLICIT_LE, bits=16,
                          rows=8, cols=10, frames=2, patient_id="PX-9")
    status, body, raw, _ = call(emulator, "POST", STORE + ":import",
                                {"gcsSource": {"uri": "gs://staging/w/i.dcm"}}, version="v1beta1")
    assert status == 200
    op = wait_op(emulator, body["name"], "v1beta1")
    assert op["error"]["code"] == 5  # nothing uploaded yet
    assert op["metadata"]["apiMethodName"] == \
        "google.cloud.healthcare.v1beta1.dicom.DicomService.ImportDicomData"
    upload(emulator, "staging", "w/i.dcm", read(p))
    op = import_files(emulator, "gs://staging/w/i.dcm", version="v1beta1")
    assert op["response"]["@type"].endswith("v1beta1.dicom.ImportDicomDataResponse")

    # operations.list: newest first
    status, body, _, _ = call(emulator, "GET", DS + "/operations")
    ids = [int(o["name"].rsplit("/", 1)[1]) for o in body["operations"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 2

    inst = "/v1/%s/studies/%s/series/%s/instances/%s" % (WEB, study, series, sop)
    # default: multipart, transcoded to explicit VR little endian
    status, hdrs, body = emulator.request("GET", inst)
    assert status == 200 and hdrs["Content-Type"].startswith("multipart/related")
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + hdrs["Content-Type"].encode() + b"\r\n\r\n" + body)
    part = msg.get_payload()[0]
    assert "1.2.840.10008.1.2.1" in part["Content-Type"]
    ds = pydicom.dcmread(io.BytesIO(part.get_payload(decode=True)))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (ds.pixel_array == pydicom.dcmread(p).pixel_array).all()

    status, hdrs, body = emulator.request("GET", inst + "/rendered",
                                          headers={"Accept": "image/png"})
    assert status == 200 and hdrs["Content-Type"] == "image/png"
    assert _png_info(body)[:2] == (10, 8)
    status, hdrs, body = emulator.request("GET", inst + "/frames/2")
    assert status == 200
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + hdrs["Content-Type"].encode() + b"\r\n\r\n" + body)
    frame = msg.get_payload()[0].get_payload(decode=True)
    assert frame == pydicom.dcmread(p).PixelData[8 * 10 * 2:]

    # includefield repeated, keywords and tags; match by tag
    status, body, _ = qido(emulator, "instances",
                           includefield=["StudyInstanceUID", "0020000E"], **{"00100020": "PX-9"})
    assert status == 200 and len(body) == 1
    assert body[0]["0020000D"]["Value"] == [study] and body[0]["0020000E"]["Value"] == [series]
    assert body[0]["00280008"]["Value"] == [2]
    status, body, _ = qido(emulator, "instances", includefield="all")
    assert body[0]["00100020"]["Value"] == ["PX-9"] and "7FE00010" not in body[0]

    status, body, _, _ = call(emulator, "GET", STORE + ":getDICOMStoreMetrics")
    assert status == 200 and body["instanceCount"] == "1" and body["studyCount"] == "1"


def test_large_instance_stow_and_retrieve(emulator, tmp):
    """A ~100 MB instance: STOW bodies above 64 MiB take the server's spool-file path."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    p = os.path.join(tmp, "big.dcm")
    samples.make_instance(p, study, series, sop, bits=16, rows=4096, cols=4096, frames=3)
    data = read(p)
    assert len(data) > 64 * 1024 * 1024
    status, _, body = emulator.request("POST", "/v1/%s/studies" % WEB, body=data,
                                       headers={"Content-Type": "application/dicom",
                                                "Accept": "application/dicom+json"}, timeout=120)
    assert status == 200, body
    status, hdrs, body = emulator.request(
        "GET", "/v1/%s/studies/%s/series/%s/instances/%s" % (WEB, study, series, sop),
        headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=120)
    assert status == 200 and len(body) == len(data) and body == data
    status, body, _ = qido(emulator, "instances", SOPInstanceUID=sop)
    assert body[0]["00280008"]["Value"] == [3] and body[0]["00280010"]["Value"] == [4096]


def test_dataset_delete_removes_stores_ops_and_data(emulator, tmp):
    stage_tree(emulator, tmp, "d", n_studies=1, n_series=1, n_instances=1)
    op = import_files(emulator, "gs://staging/d/**")
    status, body, _, _ = call(emulator, "POST", op["name"] + ":cancel", {})
    assert status == 200  # cancelling a finished operation changes nothing
    assert "error" not in wait_op(emulator, op["name"])
    status, _, _, _ = call(emulator, "DELETE", DS)
    assert status == 200
    for path in (DS, STORE, op["name"], DS + "/operations"):
        status, body, _, _ = call(emulator, "GET", path)
        assert status == 404, path
    assert not os.listdir(os.path.join(emulator.data_dir, "healthcare", "stores"))
    # the id can be used again, empty
    status, body, _, _ = call(emulator, "POST", LOC + "/datasets?datasetId=ds", {})
    wait_op(emulator, body["name"])
    status, body, _, _ = call(emulator, "POST", DS + "/dicomStores?dicomStoreId=store", {})
    assert status == 200
    status, body, _ = qido(emulator, "instances")
    assert status == 204


def test_concurrent_stow_of_the_same_instances(emulator, tmp):
    import concurrent.futures
    tree = samples.make_tree(tmp, 1, 1, 5)
    blobs = [read(t[3]) for t in tree]

    def stow(blob):
        status, _, _ = emulator.request("POST", "/v1/%s/studies" % WEB, body=blob,
                                        headers={"Content-Type": "application/dicom"})
        return status

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        statuses = list(ex.map(stow, blobs * 6))
    assert statuses == [200] * 30
    status, body, _ = qido(emulator, "instances")
    assert sorted(i["00080018"]["Value"][0] for i in body) == sorted(t[2] for t in tree)
    stores = os.path.join(emulator.data_dir, "healthcare", "stores")
    files = [f for d in os.listdir(stores) for f in os.listdir(os.path.join(stores, d, "files"))]
    assert len(files) == 5


def _dataset_with_sequences(path, study, series, sop, transfer_syntax):
    from pydicom.dataset import Dataset
    ds = samples.make_instance(path, study, series, sop, transfer_syntax=transfer_syntax)
    item = Dataset()
    item.RequestedProcedureID = "RP1"
    inner = Dataset()
    inner.CodeValue = "C1"
    inner.CodeMeaning = "nested meaning"
    item.RequestedProcedureCodeSequence = [inner]
    item2 = Dataset()
    item2.RequestedProcedureID = "RP2"
    ds.RequestAttributesSequence = [item, item2]
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091011, "LO", "private value")
    ds.ImagePositionPatient = [1.5, -2, 3]
    samples.save_dataset(ds, path)
    return ds


def test_transcode_sequences_and_metadata(emulator, tmp):
    cases = {}
    for key, ts in (("impl", samples.IMPLICIT_LE), ("be", samples.EXPLICIT_BE)):
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        p = os.path.join(tmp, key + ".dcm")
        _dataset_with_sequences(p, study, series, sop, ts)
        upload(emulator, "staging", "sq/%s.dcm" % key, read(p))
        cases[key] = (study, series, sop, p)
    assert import_files(emulator, "gs://staging/sq/*.dcm")["metadata"]["counter"] == \
        {"success": "2"}
    export(emulator, {"uriPrefix": "gs://staging/sqout",
                      "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"})
    for key, (study, series, sop, p) in cases.items():
        st, data = download(emulator, "staging", "sqout/%s/%s/%s.dcm" % (study, series, sop))
        assert st == 200
        out = pydicom.dcmread(io.BytesIO(data))
        src = pydicom.dcmread(p)
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        seq = out.RequestAttributesSequence
        assert [i.RequestedProcedureID for i in seq] == ["RP1", "RP2"]
        assert seq[0].RequestedProcedureCodeSequence[0].CodeMeaning == "nested meaning"
        assert [float(v) for v in out.ImagePositionPatient] == [1.5, -2.0, 3.0]
        if key == "impl":
            assert out.PixelData == src.PixelData
        assert (out.pixel_array == src.pixel_array).all()
        if key == "be":
            assert out[0x00091011].value in ("private value", b"private value")
        # dcmtk reads it strictly, too
        conv = os.path.join(tmp, key + ".ele.dcm")
        with open(conv, "wb") as f:
            f.write(data)
        r = subprocess.run(["dcmdump", "-q", "+E", conv], capture_output=True, text=True)
        assert r.returncode == 0 and "E:" not in r.stderr, r.stderr
        assert "Little Endian Explicit" in r.stdout or "1.2.840.10008.1.2.1" in r.stdout

    study, series, sop, _ = cases["impl"]
    status, _, body = emulator.request(
        "GET", "/v1/%s/studies/%s/series/%s/instances/%s/metadata" % (WEB, study, series, sop))
    meta = json.loads(body)[0]
    assert meta["00400275"]["vr"] == "SQ"
    assert len(meta["00400275"]["Value"]) == 2
    assert meta["00200032"] == {"vr": "DS", "Value": [1.5, -2, 3]}
    assert meta["00100010"]["Value"] == [{"Alphabetic": "DOE^JANE"}]


def test_hostile_inputs_get_clear_errors(emulator, tmp):
    cases = [
        ("POST", STORE + ":import", b"{not json"),
        ("POST", STORE + ":import", b"[]"),
        ("POST", STORE + ":import", b'{"gcsSource": "gs://x/y"}'),
        ("POST", STORE + ":import", b'{"gcsSource": {"uri": 5}}'),
        ("POST", STORE + ":import", b'{"gcsSource": {"uri": "gs:///x"}}'),
        ("POST", STORE + ":import", b'{"gcsSource": {"uri": "gs://b/**/x*"}}'),
        ("POST", STORE + ":export", b'{}'),
        ("POST", STORE + ":export", b'{"gcsDestination": {"uriPrefix": "gs://b/x*"}}'),
        ("POST", STORE + ":export", b'{"gcsDestination": {"uriPrefix": "gs://b",'
                                    b' "mimeType": "application/dicom; transfer-syntax=9.9"}}'),
        ("GET", DS + "/dicomStores?pageSize=-1", None),
        ("GET", DS + "/dicomStores?pageToken=zz", None),
        ("GET", DS + "/operations/notanumber", None),
        ("POST", LOC + "/datasets?datasetId=" + "a" * 300, b"{}"),
        ("POST", LOC + "/datasets", b"{}"),
        ("GET", WEB + "/studies?limit=abc", None),
        ("GET", WEB + "/studies?offset=1000001", None),
        ("GET", WEB + "/studies?includefield=NoSuchKeyword", None),
        ("GET", WEB + "/studies/1.2/series/3.4/instances/5.6/frames/0", None),
        ("GET", "projects/p/locations/l/datasets/ds/dicomStores/store/nothing", None),
    ]
    for method, path, body in cases:
        status, parsed, raw, _ = call(emulator, method, path, body=body)
        assert 400 <= status < 500, (method, path, status, raw)
        assert parsed and parsed["error"]["message"], (path, raw)
    # STOW garbage: not DICOM, bad multipart, wrong content type
    for ct, body in (("application/dicom", b"\0" * 200),
                     ("application/dicom", b"\0" * 128 + b"DICM" + b"\xff" * 50),
                     ("multipart/related; type=\"application/dicom\"; boundary=b", b"--b\r\nxx"),
                     ("text/plain", b"hello")):
        status, _, raw = emulator.request("POST", "/v1/%s/studies" % WEB, body=body,
                                          headers={"Content-Type": ct})
        assert status in (400, 409, 415), (ct, status, raw)
    status, body, _ = qido(emulator, "instances")
    assert status == 204  # nothing was stored


def test_jpeg_baseline_source_is_decoded(emulator, tmp):
    """dcmcjpeg makes JPEG baseline sources; dcmdjpeg gives the reference pixels."""
    import numpy as np
    cases = {}
    for key, kw in (("mono", {}), ("rgb", {"photometric": "RGB"})):
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        raw = os.path.join(tmp, key + ".raw.dcm")
        comp = os.path.join(tmp, key + ".jpg.dcm")
        ref = os.path.join(tmp, key + ".ref.dcm")
        samples.make_instance(raw, study, series, sop, rows=24, cols=32, frames=2, **kw)
        subprocess.run(["dcmcjpeg", "+eb", "+un", raw, comp], check=True)
        subprocess.run(["dcmdjpeg", comp, ref], check=True)
        assert pydicom.dcmread(comp).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        upload(emulator, "staging", "jp/%s.dcm" % key, read(comp))
        cases[key] = (study, series, sop, ref)
    assert import_files(emulator, "gs://staging/jp/*")["metadata"]["counter"] == {"success": "2"}
    op = export(emulator, {"uriPrefix": "gs://staging/jpele",
                           "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"})
    assert "error" not in op, op
    op = export(emulator, {"uriPrefix": "gs://staging/jppng", "mimeType": "image/png"})
    assert "error" not in op, op
    for key, (study, series, sop, ref) in cases.items():
        st, data = download(emulator, "staging", "jpele/%s/%s/%s.dcm" % (study, series, sop))
        assert st == 200, (st, data[:300], list_objects(emulator, "staging", "jpele/"))
        out = pydicom.dcmread(io.BytesIO(data))
        want = pydicom.dcmread(ref).pixel_array.astype(int)
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert out.PhotometricInterpretation == ("RGB" if key == "rgb" else "MONOCHROME2")
        got = out.pixel_array.astype(int)
        assert got.shape == want.shape == ((2, 24, 32, 3) if key == "rgb" else (2, 24, 32))
        assert np.abs(got - want).max() <= 3
        st, png = download(emulator, "staging",
                           "jppng/%s/%s/%s/2.png" % (study, series, sop))
        w, h, depth, color, _ = _png_info(png)
        assert (w, h, depth, color) == (32, 24, 8, 2 if key == "rgb" else 0)
    # WADO's default (explicit VR little endian) decodes it as well
    study, series, sop, ref = cases["mono"]
    status, hdrs, body = emulator.request(
        "GET", "/v1/%s/studies/%s/series/%s/instances/%s" % (WEB, study, series, sop),
        headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert status == 200
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + hdrs["Content-Type"].encode() + b"\r\n\r\n" + body)
    out = pydicom.dcmread(io.BytesIO(msg.get_payload()[0].get_payload(decode=True)))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.pixel_array.shape == (2, 24, 32)
