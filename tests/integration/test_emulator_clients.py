"""Third-party clients against dicomfs-emulator, unchanged but for endpoints
and credentials (issue 3, item 9).

* Google's official Node.js clients (tests/integration/node/flow.js):
  @google-cloud/storage with apiEndpoint, @googleapis/healthcare v1 and
  v1beta1 with rootUrl, google-auth-library's GoogleAuth reaching the token
  through the metadata server at GCE_METADATA_HOST (no
  GOOGLE_APPLICATION_CREDENTIALS, HOME pointed at an empty directory so no
  gcloud well-known file is found either).
* Debian's rclone, "google cloud storage" backend with endpoint=EMU/storage/v1/
  and service_account_file = the key the emulator wrote (--write-credentials):
  rclone signs the JWT itself and posts it to the key's token_uri, the emulator.

DICOM files are written by pydicom at test time (dicom_samples.py).
"""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

import dicom_samples
from emulator_fixture import Emulator

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
PROJECT, LOCATION, DATASET, BUCKET = "test-project", "us-central1", "ds", "staging"


# ------------------------------------------------------------------ data

def write_dicom(path, study, series, sop, rows=16, seed=0, syntax=dicom_samples.EXPLICIT_LE):
    """One Part-10 file with 16-bit monochrome pixels, written by pydicom."""
    dicom_samples.make_instance(path, study, series, sop, transfer_syntax=syntax, rows=rows,
                                cols=rows, bits=16, seed=seed, instance_number=seed + 1)


def make_instances(root):
    """2 studies x 2 series x 2 instances, distinct sizes; returns a list of dicts."""
    from pydicom.uid import generate_uid

    os.makedirs(root, exist_ok=True)
    out = []
    n = 0
    for st in range(2):
        study = generate_uid()
        for se in range(2):
            series = generate_uid()
            for _ in range(2):
                sop = generate_uid()
                p = os.path.join(root, "img%02d.dcm" % n)
                syntax = (dicom_samples.EXPLICIT_LE, dicom_samples.IMPLICIT_LE)[n % 2]
                write_dicom(p, study, series, sop, rows=16 + 2 * n, seed=n, syntax=syntax)
                out.append({"path": p, "study": study, "series": series, "sop": sop,
                            "size": os.path.getsize(p)})
                n += 1
    return out


def md5_hex(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_b64(path):
    import base64
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


# ------------------------------------------------------------------ Node flow

@pytest.fixture(scope="module")
def node_run():
    """Runs flow.js once against a fresh emulator; yields (instances, output, rc, stderr)."""
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "@google-cloud", "storage")):
        pytest.fail("tests/integration/node/node_modules missing: run contrib/install-deps.sh "
                    "(it runs npm ci there)")
    emu = Emulator()
    tmp = tempfile.mkdtemp(prefix="dicomfs-node-flow.")
    try:
        instances = make_instances(os.path.join(tmp, "dicom"))
        big = os.path.join(tmp, "big.bin")
        with open(big, "wb") as f:
            f.write(os.urandom(1100 * 1024))  # > 4 chunks of 256 KiB, not a multiple
        cfg = {
            "url": emu.url, "project": PROJECT, "location": LOCATION, "dataset": DATASET,
            "bucket": BUCKET, "files": [i["path"] for i in instances], "bigFile": big,
            "filterStudy": instances[0]["study"],
        }
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        home = os.path.join(tmp, "home")
        os.makedirs(home)
        env = {k: v for k, v in os.environ.items()
               if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG",
                            "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")}
        env["HOME"] = home
        env["GCE_METADATA_HOST"] = emu.env["GCE_METADATA_HOST"]
        env["STORAGE_EMULATOR_HOST"] = emu.env["STORAGE_EMULATOR_HOST"]
        proc = subprocess.run(["node", os.path.join(NODE_DIR, "flow.js"), cfg_path],
                              cwd=NODE_DIR, env=env, capture_output=True, text=True,
                              timeout=300)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        output = json.loads(lines[-1]) if lines else {}
        output["_big"] = {"size": os.path.getsize(big), "md5": md5_b64(big)}
        output["_url"] = emu.url
        output["_stats"] = emu.stats()
        yield instances, output, proc.returncode, proc.stderr + "\nemulator stderr:\n" + \
            emu.stderr()[-3000:]
    finally:
        emu.close()
        shutil.rmtree(tmp, ignore_errors=True)


def need(node_run, key):
    """The flow's value for `key`, or a failure naming the request that broke it."""
    _, out, rc, stderr = node_run
    if key not in out:
        err = out.get("error")
        pytest.fail("node flow did not reach %r (exit %s); failing step: %s\n%s"
                    % (key, rc, json.dumps(err, indent=1), stderr[-4000:]))
    return out[key]


def test_node_flow_exits_zero(node_run):
    _, out, rc, stderr = node_run
    assert rc == 0, "flow.js failed at %s\n%s" % (json.dumps(out.get("error"), indent=1),
                                                  stderr[-4000:])
    assert out["steps"][-1] == "download-exported"


def test_node_metadata_server_token(node_run):
    assert need(node_run, "token") is True
    stats = node_run[1]["_stats"]
    # Tokens came from the metadata server path, none from /token, and no
    # request of the flow was refused for missing credentials.
    assert stats["byKind"]["metadata"] >= 1
    assert stats["byKind"]["token"] == 0
    assert stats["unauthenticated"] == 0, stats


def test_node_uploads_listed_with_sizes_and_md5(node_run):
    instances = node_run[0]
    uploaded = need(node_run, "uploaded")
    want = sorted(("node/in/" + os.path.basename(i["path"]), str(i["size"]), md5_b64(i["path"]))
                  for i in instances)
    got = [(o["name"], o["size"], o["md5Hash"]) for o in uploaded]
    assert got == want


def test_node_resumable_upload_in_chunks(node_run):
    out = node_run[1]
    uri = need(node_run, "resumableUri")
    # The session URI points back at the emulator, on the upload path.
    assert uri.startswith(out["_url"] + "/upload/storage/v1/b/%s/o?" % BUCKET), uri
    meta = need(node_run, "resumable")
    assert meta == {"name": "node/resumable/big.bin", "size": str(out["_big"]["size"]),
                    "md5Hash": out["_big"]["md5"]}
    assert need(node_run, "resumableDownloadedSize") == out["_big"]["size"]


def test_node_store_created(node_run):
    assert need(node_run, "storeName") == \
        "projects/%s/locations/%s/datasets/%s/dicomStores/node-store" % (PROJECT, LOCATION, DATASET)


def test_node_import_operation(node_run):
    instances = node_run[0]
    op = need(node_run, "importOp")
    assert op["done"] is True
    assert "error" not in op, op
    assert "response" in op
    md = op["metadata"]
    assert md["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert md["counter"]["success"] == str(len(instances))
    assert "failure" not in md["counter"] or md["counter"]["failure"] == "0"


def test_node_export_all(node_run):
    instances = node_run[0]
    op = need(node_run, "exportAllOp")
    assert op["done"] is True and "error" not in op, op
    assert op["metadata"]["apiMethodName"] == \
        "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"
    assert op["metadata"]["counter"]["success"] == str(len(instances))
    got = [(o["name"], o["size"]) for o in need(node_run, "exportAll")]
    # Bytes as stored: each exported object is the uploaded file, same size.
    want = sorted(("node/export-all/%s/%s/%s.dcm" % (i["study"], i["series"], i["sop"]),
                   str(i["size"])) for i in instances)
    assert got == want


def test_node_export_filtered_study(node_run):
    instances = node_run[0]
    op = need(node_run, "exportOneOp")
    assert op["done"] is True and "error" not in op, op
    study = instances[0]["study"]
    chosen = [i for i in instances if i["study"] == study]
    assert op["metadata"]["counter"]["success"] == str(len(chosen))
    got = [(o["name"], o["size"], o["md5Hash"]) for o in need(node_run, "exportOne")]
    want = sorted(("node/export-one/%s/%s/%s.dcm" % (i["study"], i["series"], i["sop"]),
                   str(i["size"]), md5_b64(i["path"])) for i in chosen)
    assert got == want
    first = need(node_run, "exportOne")[0]
    assert need(node_run, "firstExportedSize") == int(first["size"])


def test_node_operations_listed(node_run):
    listed = need(node_run, "operations")
    for name in need(node_run, "opNames"):
        assert name.startswith("projects/%s/locations/%s/datasets/%s/operations/"
                               % (PROJECT, LOCATION, DATASET))
        assert name in listed


# ------------------------------------------------------------------ rclone

@pytest.fixture(scope="module")
def rclone_env():
    """A fresh emulator and the rclone remote `emu:` pointing at it."""
    if shutil.which("rclone") is None:
        pytest.fail("rclone is not installed (contrib/install-deps.sh installs it)")
    emu = Emulator()
    tmp = tempfile.mkdtemp(prefix="dicomfs-rclone.")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update({
        "RCLONE_CONFIG": os.path.join(tmp, "rclone.conf"),  # absent: env remotes only
        "RCLONE_CACHE_DIR": os.path.join(tmp, "cache"),
        "RCLONE_CONFIG_EMU_TYPE": "google cloud storage",
        "RCLONE_CONFIG_EMU_ENDPOINT": emu.url + "/storage/v1/",
        "RCLONE_CONFIG_EMU_SERVICE_ACCOUNT_FILE": emu.credentials,
        "RCLONE_CONFIG_EMU_BUCKET_POLICY_ONLY": "true",
    })
    try:
        yield emu, tmp, env
    finally:
        emu.close()
        shutil.rmtree(tmp, ignore_errors=True)


def rclone(env, *args, timeout=120):
    p = subprocess.run(["rclone", "--retries", "1", "--low-level-retries", "2", *args],
                       env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, "rclone %s exited %d:\n%s" % (" ".join(args), p.returncode,
                                                           p.stderr[-4000:])
    return p.stdout


def make_tree(root):
    """Nested dirs, an empty file, odd names, DICOM and random files of several sizes."""
    files = {
        "top.txt": b"hello rclone\n",
        "empty": b"",
        "a/b/c/deep.bin": os.urandom(300 * 1024 + 7),
        "a/b/sibling.bin": os.urandom(4096),
        "a/space name.txt": b"spaces in names\n",
        "z/unicode-\u00e9t\u00e9.txt": "\u00e9t\u00e9\n".encode(),
    }
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    from pydicom.uid import generate_uid
    os.makedirs(os.path.join(root, "dicom/s1"), exist_ok=True)
    write_dicom(os.path.join(root, "dicom/s1/i1.dcm"), generate_uid(), generate_uid(),
                generate_uid(), rows=64)
    return local_listing(root)


def local_listing(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = (os.path.getsize(p), md5_hex(p))
    return out


def assert_remote_matches(env, remote, want):
    # rclone ls: "SIZE PATH" per object
    ls = {}
    for line in rclone(env, "ls", remote).splitlines():
        size, _, name = line.strip().partition(" ")
        ls[name] = int(size)
    assert ls == {k: v[0] for k, v in want.items()}
    js = json.loads(rclone(env, "lsjson", "-R", "--files-only", "--hash", remote))
    assert {e["Path"]: e["Size"] for e in js} == {k: v[0] for k, v in want.items()}
    assert {e["Path"]: e.get("Hashes", {}).get("md5") for e in js} == \
        {k: v[1] for k, v in want.items()}
    md5 = {}
    for line in rclone(env, "md5sum", remote).splitlines():
        h, _, name = line.partition("  ")
        md5[name] = h
    assert md5 == {k: v[1] for k, v in want.items()}


def test_rclone_tree_round_trip(rclone_env):
    emu, tmp, env = rclone_env
    src = os.path.join(tmp, "tree")
    want = make_tree(src)
    rclone(env, "copy", src, "emu:%s/rclone/tree" % BUCKET)
    assert_remote_matches(env, "emu:%s/rclone/tree" % BUCKET, want)
    back = os.path.join(tmp, "tree-back")
    rclone(env, "copy", "emu:%s/rclone/tree" % BUCKET, back)
    # "empty" and every nested file come back byte-identical
    assert local_listing(back) == want
    for rel in want:
        with open(os.path.join(src, rel), "rb") as a, open(os.path.join(back, rel), "rb") as b:
            assert a.read() == b.read(), rel
    # rclone signed a JWT with the written key and posted it to its token_uri.
    stats = emu.stats()
    assert stats["byKind"]["token"] >= 1
    assert stats["unauthenticated"] == 0, stats


def test_rclone_20mib_round_trip(rclone_env):
    """20 MiB is above rclone's 8 MiB chunk size: a resumable upload in chunks."""
    emu, tmp, env = rclone_env
    src = os.path.join(tmp, "big")
    os.makedirs(src)
    with open(os.path.join(src, "big.bin"), "wb") as f:
        f.write(os.urandom(20 << 20))
    want = local_listing(src)
    rclone(env, "copy", src, "emu:%s/rclone/big" % BUCKET)
    assert_remote_matches(env, "emu:%s/rclone/big" % BUCKET, want)
    back = os.path.join(tmp, "big-back")
    rclone(env, "copy", "emu:%s/rclone/big" % BUCKET, back)
    assert local_listing(back) == want
    rclone(env, "check", src, "emu:%s/rclone/big" % BUCKET)
