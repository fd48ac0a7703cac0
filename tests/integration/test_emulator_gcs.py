"""Cloud Storage JSON API of dicomfs-emulator, checked against what the real
service (and Google's storage-testbench) answers: shapes, status codes,
checksums computed here independently (hashlib MD5, a pure-Python CRC32C).
"""
import base64
import hashlib
import http.client
import json
import os
import struct
import subprocess
import time
import urllib.parse

import pytest

CHUNK = 256 * 1024


# ---- independent checksums ----
def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def crc32c_b64(data):
    return base64.b64encode(struct.pack(">I", crc32c(data))).decode()


def md5_b64(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_crc32c_reference_value():
    # RFC 3720 B.4 check value for "123456789".
    assert crc32c(b"123456789") == 0xE3069283


# ---- helpers ----
def enc(name):
    return urllib.parse.quote(name, safe="")


def upload_media(emu, name, data, bucket="staging", content_type="application/octet-stream",
                 query="", headers=None):
    h = {"Content-Type": content_type}
    h.update(headers or {})
    return emu.request(
        "POST", "/upload/storage/v1/b/%s/o?uploadType=media&name=%s%s" % (bucket, enc(name), query),
        body=data, headers=h)


def ok_json(resp, status=200):
    code, _, body = resp
    assert code == status, body
    return json.loads(body)


def gcs_error(resp, status, reason):
    code, headers, body = resp
    assert code == status, body
    doc = json.loads(body)
    assert doc["error"]["code"] == status
    assert doc["error"]["errors"][0]["reason"] == reason
    assert doc["error"]["errors"][0]["domain"] == "global"
    assert doc["error"]["message"]
    return doc


def download(emu, name, bucket="staging", headers=None):
    return emu.request("GET", "/storage/v1/b/%s/o/%s?alt=media" % (bucket, enc(name)),
                       headers=headers)


def list_objects(emu, bucket="staging", **params):
    q = urllib.parse.urlencode(params)
    return ok_json(emu.request("GET", "/storage/v1/b/%s/o?%s" % (bucket, q)))


def start_resumable(emu, name, bucket="staging", metadata=None, headers=None):
    body = json.dumps(metadata if metadata is not None else {"name": name}).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    code, hdrs, resp = emu.request(
        "POST", "/upload/storage/v1/b/%s/o?uploadType=resumable" % bucket, body=body, headers=h)
    assert code == 200, resp
    loc = hdrs["Location"]
    assert loc.startswith(emu.url + "/upload/storage/v1/b/%s/o?" % bucket)
    assert "upload_id=" in loc
    return loc[len(emu.url):]


def put_chunk(emu, session, data, first, total, headers=None):
    h = {"Content-Type": "application/octet-stream"}
    if data:
        h["Content-Range"] = "bytes %d-%d/%s" % (first, first + len(data) - 1, total)
    else:
        h["Content-Range"] = "bytes */%s" % total
    h.update(headers or {})
    # The session URI is the credential: no Authorization header.
    return emu.request("PUT", session, body=data, headers=h, auth=False)


# ---- buckets ----
def test_bucket_insert_get_conflict(emulator):
    doc = ok_json(emulator.request("POST", "/storage/v1/b?project=test-project",
                                   body=json.dumps({"name": "bucket-one"}).encode(),
                                   headers={"Content-Type": "application/json"}))
    assert doc["kind"] == "storage#bucket"
    assert doc["name"] == "bucket-one"
    got = ok_json(emulator.request("GET", "/storage/v1/b/bucket-one"))
    assert got["name"] == "bucket-one" and got["id"] == "bucket-one"
    gcs_error(emulator.request("POST", "/storage/v1/b?project=test-project",
                               body=json.dumps({"name": "bucket-one"}).encode(),
                               headers={"Content-Type": "application/json"}), 409, "conflict")
    gcs_error(emulator.request("GET", "/storage/v1/b/no-such-bucket"), 404, "notFound")
    names = [b["name"] for b in ok_json(emulator.request("GET", "/storage/v1/b?project=p"))["items"]]
    assert names == ["bucket-one", "staging"]


# ---- uploads ----
def test_media_upload_resource(emulator):
    data = os.urandom(12345)
    doc = ok_json(upload_media(emulator, "dir/file one.dcm", data, content_type="application/dicom"))
    assert doc["kind"] == "storage#object"
    assert doc["name"] == "dir/file one.dcm"
    assert doc["bucket"] == "staging"
    assert doc["contentType"] == "application/dicom"
    assert doc["md5Hash"] == md5_b64(data)
    assert doc["crc32c"] == crc32c_b64(data)
    for field in ("size", "generation", "metageneration"):
        assert isinstance(doc[field], str), field
    assert doc["size"] == "12345"
    assert doc["generation"].isdigit() and int(doc["generation"]) > 0
    assert doc["metageneration"] == "1"
    assert doc["mediaLink"].startswith(emulator.url + "/")
    assert doc["selfLink"] == emulator.url + "/storage/v1/b/staging/o/dir%2Ffile%20one.dcm"
    assert doc["etag"] and doc["timeCreated"].endswith("Z") and doc["updated"]
    assert doc["storageClass"] == "STANDARD"
    # mediaLink serves the bytes.
    code, _, body = emulator.request("GET", doc["mediaLink"][len(emulator.url):])
    assert code == 200 and body == data
    # Metadata GET gives the same resource.
    got = ok_json(emulator.request("GET", "/storage/v1/b/staging/o/%s" % enc("dir/file one.dcm")))
    assert got["generation"] == doc["generation"] and got["md5Hash"] == doc["md5Hash"]


def test_media_upload_requires_name_and_bucket(emulator):
    code, _, body = emulator.request("POST", "/upload/storage/v1/b/staging/o?uploadType=media",
                                     body=b"x")
    gcs_error((code, None, body), 400, "required")
    gcs_error(upload_media(emulator, "a", b"x", bucket="nope"), 404, "notFound")
    gcs_error(emulator.request("POST", "/upload/storage/v1/b/staging/o?uploadType=bogus&name=a",
                               body=b"x"), 400, "invalid")


def multipart_body(metadata, data, media_type="application/octet-stream", boundary="b0undary"):
    return (b"--" + boundary.encode() + b"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            + json.dumps(metadata).encode() + b"\r\n--" + boundary.encode()
            + b"\r\nContent-Type: " + media_type.encode() + b"\r\n\r\n" + data
            + b"\r\n--" + boundary.encode() + b"--\r\n")


def test_multipart_upload(emulator):
    data = os.urandom(5000) + b"\r\n--b0undar"  # near-boundary bytes inside the media
    meta = {"name": "mp/obj", "contentType": "application/dicom", "md5Hash": md5_b64(data),
            "crc32c": crc32c_b64(data), "metadata": {"k": "v"}}
    doc = ok_json(emulator.request(
        "POST", "/upload/storage/v1/b/staging/o?uploadType=multipart",
        body=multipart_body(meta, data, "application/dicom"),
        headers={"Content-Type": "multipart/related; boundary=b0undary"}))
    assert doc["name"] == "mp/obj"
    assert doc["contentType"] == "application/dicom"
    assert doc["md5Hash"] == md5_b64(data) and doc["crc32c"] == crc32c_b64(data)
    assert doc["metadata"] == {"k": "v"}
    code, _, body = download(emulator, "mp/obj")
    assert code == 200 and body == data


def test_multipart_rejects_checksum_mismatch(emulator):
    data = b"payload"
    meta = {"name": "bad", "md5Hash": md5_b64(b"other")}
    gcs_error(emulator.request(
        "POST", "/upload/storage/v1/b/staging/o?uploadType=multipart",
        body=multipart_body(meta, data),
        headers={"Content-Type": "multipart/related; boundary=b0undary"}), 400, "invalid")
    assert "items" not in list_objects(emulator)


def test_media_rejects_x_goog_hash_mismatch(emulator):
    data = b"abc"
    gcs_error(upload_media(emulator, "h", data, headers={"x-goog-hash": "md5=" + md5_b64(b"x")}),
              400, "invalid")
    gcs_error(upload_media(emulator, "h", data,
                           headers={"x-goog-hash": "crc32c=" + crc32c_b64(b"x")}), 400, "invalid")
    ok_json(upload_media(emulator, "h", data, headers={
        "x-goog-hash": "crc32c=%s,md5=%s" % (crc32c_b64(data), md5_b64(data))}))


def test_if_generation_match(emulator):
    first = ok_json(upload_media(emulator, "g", b"1", query="&ifGenerationMatch=0"))
    gcs_error(upload_media(emulator, "g", b"2", query="&ifGenerationMatch=0"), 412,
              "conditionNotMet")
    gcs_error(upload_media(emulator, "g", b"2", query="&ifGenerationMatch=1"), 412,
              "conditionNotMet")
    second = ok_json(upload_media(emulator, "g", b"2",
                                  query="&ifGenerationMatch=" + first["generation"]))
    assert int(second["generation"]) > int(first["generation"])
    assert download(emulator, "g")[2] == b"2"


def test_resumable_upload_in_chunks(emulator):
    data = os.urandom(3 * CHUNK + 1000)
    total = len(data)
    session = start_resumable(emulator, "big/obj.bin",
                              headers={"X-Upload-Content-Type": "application/dicom"})

    # Fresh session: status query answers 308 with no Range.
    code, hdrs, _ = put_chunk(emulator, session, b"", 0, "*")
    assert code == 308 and hdrs.get("Range") is None

    # A non-final chunk that is not a multiple of 256 KiB is refused.
    code, _, body = put_chunk(emulator, session, data[:100000], 0, "*")
    assert code == 400, body

    code, hdrs, _ = put_chunk(emulator, session, data[:CHUNK], 0, "*")
    assert code == 308 and hdrs["Range"] == "bytes=0-%d" % (CHUNK - 1)

    # Status query mid-way.
    code, hdrs, _ = put_chunk(emulator, session, b"", 0, "*")
    assert code == 308 and hdrs["Range"] == "bytes=0-%d" % (CHUNK - 1)

    # Re-sending persisted bytes together with new ones: the old ones are ignored.
    code, hdrs, _ = put_chunk(emulator, session, data[:2 * CHUNK], 0, total)
    assert code == 308 and hdrs["Range"] == "bytes=0-%d" % (2 * CHUNK - 1)

    # The testbench's X-GUploader-No-308 variant.
    code, hdrs, _ = put_chunk(emulator, session, data[2 * CHUNK:3 * CHUNK], 2 * CHUNK, total,
                              headers={"X-GUploader-No-308": "yes"})
    assert code == 200
    assert hdrs["X-Http-Status-Code-Override"] == "308"
    assert hdrs["Range"] == "bytes=0-%d" % (3 * CHUNK - 1)

    # Unfinished: not visible.
    assert "items" not in list_objects(emulator, prefix="big/")
    gcs_error(emulator.request("GET", "/storage/v1/b/staging/o/" + enc("big/obj.bin")), 404,
              "notFound")

    code, _, body = put_chunk(emulator, session, data[3 * CHUNK:], 3 * CHUNK, total)
    assert code == 200, body
    doc = json.loads(body)
    assert doc["name"] == "big/obj.bin"
    assert doc["size"] == str(total)
    assert doc["md5Hash"] == md5_b64(data)
    assert doc["crc32c"] == crc32c_b64(data)
    assert doc["contentType"] == "application/dicom"
    code, _, got = download(emulator, "big/obj.bin")
    assert code == 200 and got == data

    # Status query after completion gives the resource again.
    code, _, body = put_chunk(emulator, session, b"", 0, total)
    assert code == 200 and json.loads(body)["generation"] == doc["generation"]


def test_resumable_final_status_query_completes(emulator):
    data = os.urandom(CHUNK)
    session = start_resumable(emulator, "q")
    code, _, _ = put_chunk(emulator, session, data, 0, "*")
    assert code == 308
    code, _, body = put_chunk(emulator, session, b"", 0, len(data))
    assert code == 200, body
    assert json.loads(body)["md5Hash"] == md5_b64(data)


def test_resumable_cancel(emulator):
    session = start_resumable(emulator, "cancelled")
    put_chunk(emulator, session, os.urandom(CHUNK), 0, "*")
    code, _, _ = emulator.request("DELETE", session, auth=False)
    assert code == 499
    code, _, _ = put_chunk(emulator, session, b"", 0, "*")
    assert code == 404
    assert "items" not in list_objects(emulator)


def test_resumable_session_survives_restart(emulator):
    data = os.urandom(2 * CHUNK + 7)
    session = start_resumable(emulator, "restart/obj")
    assert put_chunk(emulator, session, data[:CHUNK], 0, "*")[0] == 308
    emulator.restart()
    assert "items" not in list_objects(emulator, prefix="restart/")
    code, hdrs, _ = put_chunk(emulator, session, b"", 0, "*")
    assert code == 308 and hdrs["Range"] == "bytes=0-%d" % (CHUNK - 1)
    code, _, body = put_chunk(emulator, session, data[CHUNK:], CHUNK, len(data))
    assert code == 200, body
    assert download(emulator, "restart/obj")[2] == data


# ---- downloads ----
def test_download_full_and_ranges(emulator):
    data = bytes(range(256)) * 4
    doc = ok_json(upload_media(emulator, "r", data, content_type="application/dicom"))
    code, hdrs, body = download(emulator, "r")
    assert code == 200 and body == data
    assert hdrs["Content-Type"] == "application/dicom"
    assert hdrs["x-goog-hash"] == "crc32c=%s,md5=%s" % (crc32c_b64(data), md5_b64(data))
    assert hdrs["x-goog-generation"] == doc["generation"]
    assert hdrs["x-goog-stored-content-length"] == str(len(data))

    code, hdrs, body = download(emulator, "r", headers={"Range": "bytes=10-19"})
    assert code == 206 and body == data[10:20]
    assert hdrs["Content-Range"] == "bytes 10-19/%d" % len(data)

    code, hdrs, body = download(emulator, "r", headers={"Range": "bytes=1000-"})
    assert code == 206 and body == data[1000:]
    assert hdrs["Content-Range"] == "bytes 1000-1023/1024"

    code, hdrs, body = download(emulator, "r", headers={"Range": "bytes=-5"})
    assert code == 206 and body == data[-5:]

    code, _, _ = download(emulator, "r", headers={"Range": "bytes=5000-"})
    assert code == 416

    # The /download/ form, and the generation check.
    code, _, body = emulator.request(
        "GET", "/download/storage/v1/b/staging/o/r?generation=" + doc["generation"])
    assert code == 200 and body == data
    gcs_error(emulator.request("GET", "/download/storage/v1/b/staging/o/r?generation=1"), 404,
              "notFound")


# ---- listing ----
NAMES = ["dir/a", "dir/b", "dir/sub/c", "dir/sub/d", "top"]


def test_list_prefix_delimiter(emulator):
    for n in NAMES:
        ok_json(upload_media(emulator, n, n.encode()))
    doc = list_objects(emulator, prefix="dir/", delimiter="/")
    assert doc["kind"] == "storage#objects"
    assert [i["name"] for i in doc["items"]] == ["dir/a", "dir/b"]
    assert doc["prefixes"] == ["dir/sub/"]
    doc = list_objects(emulator, delimiter="/")
    assert [i["name"] for i in doc["items"]] == ["top"]
    assert doc["prefixes"] == ["dir/"]
    doc = list_objects(emulator)
    assert [i["name"] for i in doc["items"]] == NAMES
    assert all(isinstance(i["size"], str) for i in doc["items"])
    doc = list_objects(emulator, startOffset="dir/b", endOffset="top")
    assert [i["name"] for i in doc["items"]] == ["dir/b", "dir/sub/c", "dir/sub/d"]


def test_list_pagination(emulator):
    for n in NAMES:
        ok_json(upload_media(emulator, n, b"x"))
    seen, pages, token = [], 0, None
    while True:
        params = {"maxResults": 2}
        if token:
            params["pageToken"] = token
        doc = list_objects(emulator, **params)
        pages += 1
        assert len(doc.get("items", [])) <= 2
        seen += [i["name"] for i in doc.get("items", [])]
        token = doc.get("nextPageToken")
        if not token:
            break
        assert pages < 10
    assert pages == 3
    assert seen == NAMES


def test_list_pagination_with_prefixes(emulator):
    for n in NAMES:
        ok_json(upload_media(emulator, n, b"x"))
    first = list_objects(emulator, prefix="dir/", delimiter="/", maxResults=2)
    assert [i["name"] for i in first["items"]] == ["dir/a", "dir/b"]
    assert "prefixes" not in first
    second = list_objects(emulator, prefix="dir/", delimiter="/", maxResults=2,
                          pageToken=first["nextPageToken"])
    assert second["prefixes"] == ["dir/sub/"] and "items" not in second
    assert "nextPageToken" not in second


def test_root_b_form(emulator):
    ok_json(upload_media(emulator, "node/x", b"node"))
    doc = ok_json(emulator.request("GET", "/b/staging/o?prefix=node/"))
    assert [i["name"] for i in doc["items"]] == ["node/x"]
    assert ok_json(emulator.request("GET", "/b/staging"))["name"] == "staging"
    code, _, body = emulator.request("GET", "/b/staging/o/node%2Fx?alt=media")
    assert code == 200 and body == b"node"


# ---- delete ----
def test_delete(emulator):
    ok_json(upload_media(emulator, "d/x", b"bye"))
    code, _, body = emulator.request("DELETE", "/storage/v1/b/staging/o/" + enc("d/x"))
    assert code == 204 and body == b""
    gcs_error(emulator.request("GET", "/storage/v1/b/staging/o/" + enc("d/x")), 404, "notFound")
    gcs_error(emulator.request("DELETE", "/storage/v1/b/staging/o/" + enc("d/x")), 404, "notFound")


# ---- batch (POST /batch/storage/v1, multipart/mixed of application/http parts) ----
def batch_body(calls, boundary="===b4tch==="):
    out = []
    for i, (method, path) in enumerate(calls):
        out.append("--%s\r\nContent-Type: application/http\r\nContent-ID: <c%d>\r\n\r\n"
                   "%s %s HTTP/1.1\r\n\r\n" % (boundary, i, method, path))
    out.append("--%s--\r\n" % boundary)
    return "".join(out).encode(), "multipart/mixed; boundary=\"%s\"" % boundary


def batch(emu, calls, **kw):
    body, ctype = batch_body(calls, **kw)
    return emu.request("POST", "/batch/storage/v1", body=body, headers={"Content-Type": ctype})


def batch_parts(resp):
    """Splits a 200 multipart/mixed answer into (content_id, status, json-or-None)."""
    code, headers, body = resp
    assert code == 200, body
    ctype = headers["Content-Type"]
    assert ctype.startswith("multipart/mixed; boundary=")
    boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
    assert body.endswith(b"--" + boundary + b"--\r\n")
    parts = []
    for raw in body.split(b"--" + boundary)[1:-1]:
        head, inner = raw.lstrip(b"\r\n").split(b"\r\n\r\n", 1)
        fields = dict(h.split(": ", 1) for h in head.decode().split("\r\n"))
        assert fields["Content-Type"] == "application/http"
        status_line, rest = inner.split(b"\r\n", 1)
        ihead, ibody = rest.split(b"\r\n\r\n", 1)
        ibody = ibody[:-2]  # the line break before the next delimiter
        ilen = [int(h.split(b": ")[1]) for h in ihead.split(b"\r\n") if h.startswith(b"Content-Length")]
        assert ilen == [len(ibody)]
        parts.append((fields.get("Content-ID"), int(status_line.split()[1]),
                      json.loads(ibody) if ibody else None))
    return parts


def test_batch_delete_and_get(emulator):
    for n in ("bt/a", "bt/b c", "bt/keep"):
        ok_json(upload_media(emulator, n, b"x" + n.encode()))
    before = emulator.stats()
    parts = batch_parts(batch(emulator, [
        ("DELETE", "/storage/v1/b/staging/o/" + enc("bt/a")),
        ("DELETE", "/storage/v1/b/staging/o/" + enc("bt/missing")),
        ("DELETE", "/storage/v1/b/staging/o/" + enc("bt/b c")),
        ("GET", "/storage/v1/b/staging/o/" + enc("bt/keep")),
        ("DELETE", "/storage/v1/b/nobucket/o/x"),
        ("PATCH", "/storage/v1/b/staging/o/" + enc("bt/keep")),
        # Batches serve no downloads (documented): alt=media is a 400 part,
        # however spelled; alt=json is the metadata as without it.
        ("GET", "/storage/v1/b/staging/o/" + enc("bt/keep") + "?alt=media"),
        ("GET", "/storage/v1/b/staging/o/" + enc("bt/keep") + "?fields=name&alt=%6Dedia"),
        ("GET", "/storage/v1/b/staging/o/" + enc("bt/keep") + "?alt=json"),
    ]))
    # One HTTP request for six calls, in the statistics as on the wire.
    after = emulator.stats()
    assert after["byKind"]["gcs"] == before["byKind"]["gcs"] + 1
    assert after["gcs"]["batchRequests"] == before["gcs"]["batchRequests"] + 1
    assert after["gcs"]["batchCalls"] == before["gcs"]["batchCalls"] + 9
    assert after["gcs"]["objectDeletes"] == before["gcs"]["objectDeletes"]
    assert [p[0] for p in parts] == ["<response-c%d>" % i for i in range(9)]
    assert [p[1] for p in parts] == [204, 404, 204, 200, 404, 405, 400, 400, 200]
    assert parts[0][2] is None and parts[2][2] is None
    assert parts[1][2]["error"]["errors"][0]["reason"] == "notFound"
    assert parts[3][2]["name"] == "bt/keep" and parts[3][2]["size"] == "8"
    for p in parts[6:8]:
        assert p[2]["error"]["code"] == 400
        assert p[2]["error"]["errors"][0]["reason"] == "invalid"
        assert "media downloads" in p[2]["error"]["message"]
    assert parts[8][2] == parts[3][2]
    for n, status in (("bt/a", 404), ("bt/b c", 404), ("bt/keep", 200)):
        code, _, _ = emulator.request("GET", "/storage/v1/b/staging/o/" + enc(n))
        assert code == status, n


def test_batch_limits(emulator):
    ok_json(upload_media(emulator, "lim/0", b"0"))
    calls = [("DELETE", "/storage/v1/b/staging/o/" + enc("lim/%d" % i)) for i in range(101)]
    gcs_error(batch(emulator, calls), 400, "invalid")
    # Nothing of a refused batch ran.
    code, _, _ = emulator.request("GET", "/storage/v1/b/staging/o/" + enc("lim/0"))
    assert code == 200
    parts = batch_parts(batch(emulator, calls[:100]))
    assert len(parts) == 100 and parts[0][1] == 204 and {p[1] for p in parts[1:]} == {404}
    gcs_error(emulator.request("POST", "/batch/storage/v1", body=b"x",
                               headers={"Content-Type": "text/plain"}), 400, "invalid")
    gcs_error(emulator.request("GET", "/batch/storage/v1"), 405, "invalid")
    code, _, _ = emulator.request("POST", "/batch/storage/v1", body=batch_body(calls[:1])[0],
                                  headers={"Content-Type": batch_body(calls[:1])[1]}, auth=False)
    assert code == 401


def test_batch_is_one_request_to_faults(emulator_factory):
    emu = emulator_factory("--fail-rate", "1", "--fault-paths", "/batch/")
    ok_json(upload_media(emu, "f/x", b"x"))
    code, _, _ = batch(emu, [("DELETE", "/storage/v1/b/staging/o/" + enc("f/x"))])
    assert code in (429, 500, 503)
    code, _, _ = emu.request("GET", "/storage/v1/b/staging/o/" + enc("f/x"))
    assert code == 200  # a failed batch did nothing


# ---- persistence ----
def test_persistence_across_restart(emulator):
    data = os.urandom(4096)
    doc = ok_json(upload_media(emulator, "keep/me", data))
    token = emulator.token()
    assert emulator.restart() == 0
    emulator._token = token  # tokens persist across restarts too
    got = ok_json(emulator.request("GET", "/storage/v1/b/staging/o/" + enc("keep/me")))
    assert got["generation"] == doc["generation"] and got["md5Hash"] == md5_b64(data)
    assert download(emulator, "keep/me")[2] == data
    assert ok_json(emulator.request("GET", "/storage/v1/b/staging"))["name"] == "staging"


def test_large_upload_spooled_to_disk(emulator):
    # Above the 64 MiB in-memory limit the body goes through a temp file.
    data = os.urandom(1 << 20) * 65 + b"tail"
    doc = ok_json(upload_media(emulator, "large", data))
    assert doc["size"] == str(len(data))
    assert doc["md5Hash"] == md5_b64(data)
    code, _, body = download(emulator, "large", headers={"Range": "bytes=%d-" % (len(data) - 10)})
    assert code == 206 and body == data[-10:]


# ---- faults ----
def status_sequence(emu, n=30):
    seq = []
    for _ in range(n):
        code, hdrs, _ = emu.request("GET", "/storage/v1/b/staging/o")
        if code == 429:
            assert hdrs["Retry-After"] == "1"
        seq.append(code)
    return seq


def test_fail_rate_is_repeatable_with_seed(emulator_factory):
    args = ("--fail-rate", "0.3", "--seed", "42", "--fault-paths", "/storage/")
    first = emulator_factory(*args)
    second = emulator_factory(*args)
    a, b = status_sequence(first), status_sequence(second)
    assert a == b
    assert 200 in a and set(a) - {200}, a
    assert set(a) <= {200, 429, 500, 503}
    other = emulator_factory("--fail-rate", "0.3", "--seed", "43", "--fault-paths", "/storage/")
    assert status_sequence(other) != a
    stats = first.stats()
    injected = sum(stats["faults"][k] for k in ("http429", "http500", "http503"))
    assert injected == sum(1 for c in a if c != 200)


def test_fault_error_bodies_are_gcs_shaped(emulator_factory):
    emu = emulator_factory("--fail-rate", "1", "--fault-paths", "/nothing/,/storage/")
    emu.token()  # /token is outside the fault paths
    code, _, body = emu.request("GET", "/storage/v1/b/staging")
    assert code in (429, 500, 503)
    doc = json.loads(body)
    assert doc["error"]["code"] == code and doc["error"]["errors"][0]["reason"]
    # Control paths never get faults.
    assert emu.request("GET", "/_emulator/stats", auth=False)[0] == 200


def test_malformed_rate_garbles_json(emulator_factory):
    emu = emulator_factory("--malformed-rate", "1", "--fault-paths", "/storage/")
    for _ in range(5):
        code, _, body = emu.request("GET", "/storage/v1/b/staging")
        assert code == 200
        with pytest.raises(ValueError):
            json.loads(body)
    assert emu.stats()["faults"]["malformed"] >= 5


def test_reset_rate_cuts_connections(emulator_factory):
    emu = emulator_factory("--reset-rate", "1", "--fault-paths", "/storage/")
    token = emu.token()
    failures = 0
    for _ in range(4):
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-H", "Authorization: Bearer " + token,
                            emu.url + "/storage/v1/b/staging/o"], capture_output=True, timeout=20)
        failures += r.returncode != 0
    assert failures == 4
    assert emu.stats()["faults"]["resets"] >= 4


def test_latency(emulator_factory):
    emu = emulator_factory("--fault-latency-ms", "300", "--fault-paths", "/storage/")
    emu.token()
    t0 = time.monotonic()
    assert emu.request("GET", "/storage/v1/b/staging")[0] == 200
    assert time.monotonic() - t0 >= 0.3


def test_runtime_fault_control(emulator):
    emulator.token()
    code, _, body = emulator.request("POST", "/_emulator/faults?fail_rate=1", auth=False)
    assert code == 200 and json.loads(body)["failRate"] == 1
    assert emulator.request("GET", "/storage/v1/b/staging")[0] in (429, 500, 503)
    emulator.request("POST", "/_emulator/faults?fail_rate=0", auth=False)
    assert emulator.request("GET", "/storage/v1/b/staging")[0] == 200


def test_ok_at_root_and_stats(emulator):
    code, _, body = emulator.request("GET", "/", auth=False)
    assert code == 200 and body == b"OK"
    before = emulator.stats()
    emulator.request("GET", "/storage/v1/b/staging")
    after = emulator.stats()
    assert after["byKind"]["gcs"] == before["byKind"]["gcs"] + 1
    assert after["total"] > before["total"]


def test_resumable_single_stream_open_range(emulator):
    # @google-cloud/storage streams a whole upload as "bytes 0-*/*".
    data = os.urandom(300000)
    session = start_resumable(emulator, "stream")
    code, _, body = emulator.request("PUT", session, body=data, auth=False,
                                     headers={"Content-Range": "bytes 0-*/*"})
    assert code == 200, body
    doc = json.loads(body)
    assert doc["size"] == str(len(data)) and doc["md5Hash"] == md5_b64(data)
    assert download(emulator, "stream")[2] == data


def test_bucket_delete(emulator):
    ok_json(emulator.request("POST", "/storage/v1/b?project=test-project",
                             body=json.dumps({"name": "gone-soon"}).encode(),
                             headers={"Content-Type": "application/json"}))
    ok_json(upload_media(emulator, "x", b"x", bucket="gone-soon"))
    gcs_error(emulator.request("DELETE", "/storage/v1/b/gone-soon"), 409, "conflict")
    assert emulator.request("DELETE", "/storage/v1/b/gone-soon/o/x")[0] == 204
    code, _, body = emulator.request("DELETE", "/storage/v1/b/gone-soon")
    assert code == 204 and body == b""
    gcs_error(emulator.request("GET", "/storage/v1/b/gone-soon"), 404, "notFound")
    emulator.restart()
    gcs_error(emulator.request("GET", "/storage/v1/b/gone-soon"), 404, "notFound")


# ---- command line ----
def test_cli_help_and_bad_arguments():
    from emulator_fixture import emulator_binary
    r = subprocess.run([emulator_binary(), "--help"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0
    for opt in ("--listen", "--data", "--write-credentials", "--fail-rate", "--seed",
                "--reset-rate", "--malformed-rate", "--latency-ms", "--token-ttl", "--no-auth"):
        assert opt in r.stdout, opt
    for bad in (["--fail-rate", "2"], ["--listen", "nonsense"], ["--bogus"],
                ["--project", "p", "--dataset", "d"]):
        r = subprocess.run([emulator_binary()] + bad, capture_output=True, text=True, timeout=20)
        assert r.returncode != 0, bad
        assert "dicomfs-emulator" in r.stderr or "usage" in r.stderr, bad


def test_cli_without_data_dir_uses_a_temp_dir_and_removes_it():
    from emulator_fixture import emulator_binary
    p = subprocess.Popen([emulator_binary(), "--no-auth", "--bucket", "b-tmp", "--verbose"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        export = p.stdout.readline()
        ready = p.stdout.readline()
        assert export.startswith("export STORAGE_EMULATOR_HOST=http://127.0.0.1:")
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in export
        assert ready.startswith("dicomfs-emulator ready on http://127.0.0.1:")
        url = ready.split(" on ", 1)[1].strip()
        r = subprocess.run(["curl", "-sS", url + "/storage/v1/b/b-tmp"], capture_output=True,
                           text=True, timeout=20)
        assert json.loads(r.stdout)["name"] == "b-tmp"
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    temp = [l.split("using ", 1)[1].split(" ", 1)[0] for l in err.splitlines() if "no --data" in l]
    assert temp and not os.path.exists(temp[0])
    # --verbose logs requests by path, never queries or tokens.
    assert "GET /storage/v1/b/b-tmp -> 200" in err


def resumable_upload_following_range(emu, session, data, step):
    """A client that resumes from the server's Range, as GCS requires."""
    code, hdrs, _ = put_chunk(emu, session, b"", 0, "*")  # where are we?
    assert code == 308
    offset = int(hdrs["Range"].split("-")[1]) + 1 if hdrs.get("Range") else 0
    requests = 0
    while True:
        requests += 1
        assert requests < 200
        piece = data[offset:offset + step]
        code, hdrs, body = put_chunk(emu, session, piece, offset, len(data))
        if code == 200:
            return json.loads(body), requests
        assert code == 308, body
        rng = hdrs.get("Range")
        new_offset = int(rng.split("-")[1]) + 1 if rng else 0
        assert new_offset % CHUNK == 0 and new_offset <= offset + len(piece)
        offset = new_offset


def test_partial_persistence_fault(emulator_factory):
    emu = emulator_factory("--partial-rate", "1", "--seed", "5")
    data = os.urandom(4 * CHUNK)
    session = start_resumable(emu, "partial")
    code, hdrs, _ = put_chunk(emu, session, data, 0, "*")
    assert code == 308
    kept = int(hdrs["Range"].split("-")[1]) + 1 if hdrs.get("Range") else 0
    assert kept < len(data) and kept % CHUNK == 0
    emu.request("POST", "/_emulator/faults?partial_rate=0.5", auth=False)
    doc, requests = resumable_upload_following_range(emu, session, data, 2 * CHUNK)
    assert doc["md5Hash"] == md5_b64(data) and doc["size"] == str(len(data))
    assert download(emu, "partial")[2] == data
    assert emu.stats()["faults"]["partial"] >= 1


def test_reset_after_handling_empty_answer(emulator_factory):
    # A DELETE answers 204 without a body: a reset then drops the answer
    # (the connection closes with no response), whether or not it took effect.
    emu = emulator_factory()
    ok_json(upload_media(emu, "r1", b"x"))
    token = emu.token()
    emu.request("POST", "/_emulator/faults?reset_rate=1", auth=False)
    r = subprocess.run(["curl", "-sS", "-X", "DELETE", "-H", "Authorization: Bearer " + token,
                        emu.url + "/storage/v1/b/staging/o/r1"], capture_output=True, timeout=20)
    assert r.returncode != 0
    emu.request("POST", "/_emulator/faults?reset_rate=0", auth=False)
    assert emu.stats()["faults"]["resets"] == 1


def test_concurrent_uploads_and_listings(emulator):
    from concurrent.futures import ThreadPoolExecutor
    token = emulator.token()
    payloads = {"conc/%03d" % i: os.urandom(1000 + i) for i in range(120)}

    def work(item):
        name, data = item
        if int(name[-3:]) % 3 == 0:
            session = start_resumable(emulator, name)
            code, _, body = put_chunk(emulator, session, data, 0, len(data))
        else:
            code, _, body = upload_media(emulator, name, data)
        assert code == 200, body
        # Listings and reads interleave with the writes of other threads.
        list_objects(emulator, prefix="conc/", maxResults=7)
        assert download(emulator, name)[2] == data
        return name

    with ThreadPoolExecutor(max_workers=16) as pool:
        done = list(pool.map(work, payloads.items()))
    assert sorted(done) == sorted(payloads)
    names, token_ = [], None
    while True:
        params = {"prefix": "conc/"}
        if token_:
            params["pageToken"] = token_
        doc = list_objects(emulator, **params)
        names += [i["name"] for i in doc["items"]]
        for i in doc["items"]:
            assert i["md5Hash"] == md5_b64(payloads[i["name"]])
        token_ = doc.get("nextPageToken")
        if not token_:
            break
    assert names == sorted(payloads)
    assert token == emulator.token()


def test_empty_object(emulator):
    doc = ok_json(upload_media(emulator, "empty", b""))
    assert doc["size"] == "0"
    assert doc["md5Hash"] == md5_b64(b"") and doc["crc32c"] == crc32c_b64(b"")
    code, _, body = download(emulator, "empty")
    assert code == 200 and body == b""
    code, _, body = download(emulator, "empty", headers={"Range": "bytes=0-"})
    assert code == 200 and body == b""


def test_resumable_checks_declared_checksums(emulator):
    data = os.urandom(1000)
    session = start_resumable(emulator, "ck", metadata={"name": "ck", "md5Hash": md5_b64(b"no")})
    code, _, body = put_chunk(emulator, session, data, 0, len(data))
    gcs_error((code, None, body), 400, "invalid")
    assert "items" not in list_objects(emulator)
    # The final chunk's x-goog-hash is checked as well, and a match passes.
    session = start_resumable(emulator, "ck")
    code, _, body = put_chunk(emulator, session, data, 0, len(data),
                              headers={"x-goog-hash": "crc32c=" + crc32c_b64(b"no")})
    assert code == 400, body
    session = start_resumable(emulator, "ck", metadata={"name": "ck", "crc32c": crc32c_b64(data)})
    code, _, body = put_chunk(emulator, session, data, 0, len(data),
                              headers={"x-goog-hash": "md5=" + md5_b64(data)})
    assert code == 200, body


def test_reset_during_uploads_never_leaves_partial_objects(emulator_factory, tmp_path):
    emu = emulator_factory("--reset-rate", "1", "--seed", "11", "--fault-paths", "/upload/")
    token = emu.token()
    data = os.urandom(2 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    for i in range(6):
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-X", "POST", "-T", str(src),
                            "-H", "Authorization: Bearer " + token,
                            "-H", "Content-Type: application/octet-stream",
                            emu.url + "/upload/storage/v1/b/staging/o?uploadType=media&name=u%d" % i],
                           capture_output=True, timeout=30)
        assert r.returncode != 0
    # Each upload either took effect whole (answer lost) or not at all.
    for item in list_objects(emu).get("items", []):
        assert item["size"] == str(len(data)) and item["md5Hash"] == md5_b64(data)
    assert emu.stats()["faults"]["resets"] == 6


# ---- resumable chunks written as they arrive ----
MiB = 1 << 20


def range_end(hdrs):
    """Bytes the server holds, from a 308's Range (none: 0)."""
    rng = hdrs.get("Range")
    return int(rng.split("-")[1]) + 1 if rng else 0


def status(emu, session, total="*"):
    code, hdrs, body = put_chunk(emu, session, b"", 0, total)
    assert code == 308, body
    return range_end(hdrs)


def assert_object(emu, name, data):
    code, hdrs, got = download(emu, name)
    assert code == 200 and got == data
    doc = ok_json(emu.request("GET", "/storage/v1/b/staging/o/" + enc(name)))
    assert doc["size"] == str(len(data))
    assert doc["md5Hash"] == md5_b64(data)
    assert doc["crc32c"] == crc32c_b64(data)
    assert hdrs["x-goog-hash"] == "crc32c=%s,md5=%s" % (crc32c_b64(data), md5_b64(data))


def open_chunk(emu, session, first, length, total):
    """Starts a chunk PUT of length bytes on its own connection, body to follow."""
    host, port = emu.url[len("http://"):].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("PUT", session, skip_accept_encoding=True)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(length))
    conn.putheader("Content-Range", "bytes %d-%d/%s" % (first, first + length - 1, total))
    conn.endheaders()
    return conn


def wait_status(emu, session, want, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        got = status(emu, session)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def test_resumable_several_chunks_hashes_and_content(emulator):
    # As dicomfs streams a big file: MiB chunks of unknown total, then the
    # last one with the total; sizes that are not a multiple of 256 KiB end.
    data = os.urandom(3 * MiB + 5 * CHUNK + 123)
    session = start_resumable(emulator, "multi/obj",
                              headers={"X-Upload-Content-Type": "application/dicom"})
    off, step, chunks = 0, MiB + CHUNK, 0
    while len(data) - off > step:
        code, hdrs, body = put_chunk(emulator, session, data[off:off + step], off, "*")
        assert code == 308, body
        off += step
        chunks += 1
        assert range_end(hdrs) == off
    code, _, body = put_chunk(emulator, session, data[off:], off, len(data))
    assert code == 200, body
    assert chunks == 3
    doc = json.loads(body)
    assert doc["size"] == str(len(data)) and doc["contentType"] == "application/dicom"
    assert doc["md5Hash"] == md5_b64(data) and doc["crc32c"] == crc32c_b64(data)
    assert_object(emulator, "multi/obj", data)


def test_resumable_resent_overlapping_chunks_keep_hashes(emulator):
    data = os.urandom(2 * MiB + 777)
    session = start_resumable(emulator, "overlap")
    code, hdrs, _ = put_chunk(emulator, session, data[:MiB], 0, "*")
    assert code == 308 and range_end(hdrs) == MiB
    # The same chunk again (as after a lost 308): nothing changes.
    code, hdrs, _ = put_chunk(emulator, session, data[:MiB], 0, "*")
    assert code == 308 and range_end(hdrs) == MiB
    # A chunk re-sent from an older offset: the bytes already held are
    # skipped (even if they differ), only those past them are appended.
    half = MiB // 2
    resent = b"\0" * half + data[MiB:MiB + half]
    code, hdrs, _ = put_chunk(emulator, session, resent, half, "*")
    assert code == 308 and range_end(hdrs) == MiB + half
    # The last chunk, overlapping too, with the total.
    code, _, body = put_chunk(emulator, session, data[MiB:], MiB, len(data))
    assert code == 200, body
    doc = json.loads(body)
    assert doc["md5Hash"] == md5_b64(data) and doc["crc32c"] == crc32c_b64(data)
    assert_object(emulator, "overlap", data)


def test_resumable_status_query_mid_upload(emulator):
    data = os.urandom(3 * MiB)
    session = start_resumable(emulator, "status/obj")
    assert status(emulator, session) == 0
    assert put_chunk(emulator, session, data[:MiB], 0, "*")[0] == 308
    # Both forms of the query: unknown total, and the total not reached yet.
    assert status(emulator, session, "*") == MiB
    assert status(emulator, session, str(len(data))) == MiB
    assert "items" not in list_objects(emulator, prefix="status/")
    code, _, body = put_chunk(emulator, session, data[MiB:], MiB, len(data))
    assert code == 200, body
    assert_object(emulator, "status/obj", data)


def test_resumable_chunk_in_flight_keeps_whole_quanta(emulator):
    # A chunk is written as it arrives: a status query while it streams in
    # sees the whole 256 KiB quanta received so far, and a chunk cut short
    # keeps them (as GCS does); the upload then resumes from the Range.
    data = os.urandom(3 * MiB + 99)
    session = start_resumable(emulator, "inflight")
    assert put_chunk(emulator, session, data[:MiB], 0, "*")[0] == 308
    conn = open_chunk(emulator, session, MiB, MiB, "*")
    conn.send(data[MiB:MiB + 3 * CHUNK + 100])
    assert wait_status(emulator, session, MiB + 3 * CHUNK) == MiB + 3 * CHUNK
    conn.close()  # the rest of the chunk never comes
    time.sleep(0.2)
    assert status(emulator, session) == MiB + 3 * CHUNK
    off = MiB + 3 * CHUNK
    code, _, body = put_chunk(emulator, session, data[off:], off, len(data))
    assert code == 200, body
    assert_object(emulator, "inflight", data)


def test_resumable_hashes_after_restart(emulator):
    # The running hashes are lost with the process: the part file is hashed
    # once at the end instead, overlapping chunks included.
    data = os.urandom(2 * MiB + 3)
    session = start_resumable(emulator, "restart/hashed")
    assert put_chunk(emulator, session, data[:MiB], 0, "*")[0] == 308
    emulator.restart()
    code, hdrs, _ = put_chunk(emulator, session, data[MiB // 2:MiB // 2 + MiB], MiB // 2, "*")
    assert code == 308 and range_end(hdrs) == MiB + MiB // 2
    off = MiB + MiB // 2
    code, _, body = put_chunk(emulator, session, data[off:], off, len(data))
    assert code == 200, body
    doc = json.loads(body)
    assert doc["md5Hash"] == md5_b64(data) and doc["crc32c"] == crc32c_b64(data)
    assert_object(emulator, "restart/hashed", data)


def test_resumable_cancel_while_chunk_streams(emulator):
    data = os.urandom(2 * MiB)
    session = start_resumable(emulator, "cancel/inflight")
    conn = open_chunk(emulator, session, 0, len(data), len(data))
    conn.send(data[:MiB])
    assert wait_status(emulator, session, MiB) == MiB
    code, _, _ = emulator.request("DELETE", session, auth=False)
    assert code == 499
    conn.send(data[MiB:])
    resp = conn.getresponse()
    assert resp.status == 404, resp.read()
    conn.close()
    assert "items" not in list_objects(emulator)
    uploads = os.path.join(emulator.data_dir, "gcs", "uploads")
    assert [f for f in os.listdir(uploads) if f.endswith(".part")] == []
