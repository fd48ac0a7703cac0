"""Helpers for the resilience suites (faults, crash, restart, bad input, security).

The suites need things the shared fixtures do not give: the daemon's PID (to
SIGKILL it), its stderr (to grep for secrets), a remount on the same
cache_dir after a crash, and an independent view of what reached the store
(QIDO-RS through the emulator's DICOMweb API with urllib, never through
dicomfs). So this module starts dicomfs itself, in the foreground (-f), and
ends it by PID.

Everything here is generic: nothing knows the answer a test expects.
"""
import collections
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROJECT = "test-project"
LOCATION = "us-central1"
DATASET = "ds"
STORE = "store"
BUCKET = "staging"
LOCATION_NAME = "projects/%s/locations/%s" % (PROJECT, LOCATION)
DATASET_NAME = LOCATION_NAME + "/datasets/" + DATASET
STORE_NAME = DATASET_NAME + "/dicomStores/" + STORE

LONG = os.environ.get("DICOMFS_LONG") == "1"


def build_dir():
    return os.environ.get("DICOMFS_BUILD", os.path.join(REPO, "build-san"))


def dicomfs_binary():
    return os.path.join(build_dir(), "fs", "dicomfs")


# --------------------------------------------------------------- figures

FIGURES_FILE = os.environ.get("DICOMFS_FIGURES")


def record_figures(suite, record_property=None, **figures):
    """Prints the figures of a run ("FIGURES {json}", shown with pytest -rA)
    and appends them as one JSON line to $DICOMFS_FIGURES when that is set.
    (record_property, if given, also puts them in a legacy/xunit1 JUnit XML;
    the suites do not request it: pytest's default xunit2 drops it with a
    warning.)"""
    entry = dict(suite=suite, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    entry.update(figures)
    line = json.dumps(entry, sort_keys=True)
    print("FIGURES " + line)
    if FIGURES_FILE:
        with open(FIGURES_FILE, "a") as f:
            f.write(line + "\n")
    if record_property:
        for k, v in figures.items():
            record_property(k, v)
    return entry


def fault_totals(stats):
    """Sums the injected faults from GET /_emulator/stats."""
    f = stats.get("faults", {})
    return {
        "http429": f.get("http429", 0),
        "http500": f.get("http500", 0),
        "http503": f.get("http503", 0),
        "resets": f.get("resets", 0),
        "malformed": f.get("malformed", 0),
        "delayed": f.get("delayed", 0),
        "requests": stats.get("total", 0),
        "unauthenticated": stats.get("unauthenticated", 0),
    }


def add_faults(a, b):
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


# --------------------------------------------------------------- DICOM samples

def _uid():
    import pydicom.uid
    return pydicom.uid.generate_uid()


def write_instance(path, study, series, sop, patient="RESILIENCE^TEST", rows=8, cols=8,
                   number=1):
    """Writes one explicit-VR little-endian Secondary Capture file with pydicom."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = patient
    ds.PatientID = "RES-" + study[-6:]
    ds.Modality = "OT"
    ds.StudyDate = "20240101"
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((i * 7 + number) & 0xFF for i in range(rows * cols))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, write_like_original=False)


class SampleSet(collections.OrderedDict):
    """relpath -> SOP Instance UID, in creation order; .root is the source
    directory, .study[rel] and .series[rel] the file's study and series UIDs."""

    def __init__(self, root):
        super().__init__()
        self.root = root
        self.study = {}
        self.series = {}


def make_tree(root, n_files, studies=4, series_per_study=3, rows=8, cols=8, prefix=""):
    """Writes n_files DICOM files under root as PREFIXstudyN/seriesM/imgK.dcm,
    spread over several studies and series. Returns a SampleSet."""
    study_uids = [_uid() for _ in range(studies)]
    series_uids = [[_uid() for _ in range(series_per_study)] for _ in range(studies)]
    files = SampleSet(root)
    for i in range(n_files):
        s = i % studies
        r = (i // studies) % series_per_study
        sop = _uid()
        rel = "%sstudy%d/series%d/img%04d.dcm" % (prefix, s, r, i)
        write_instance(os.path.join(root, rel), study_uids[s], series_uids[s][r], sop,
                       rows=rows, cols=cols, number=i + 1)
        files[rel] = sop
        files.study[rel] = study_uids[s]
        files.series[rel] = series_uids[s][r]
    return files


# --------------------------------------------------------------- store view (QIDO-RS)

def _request(emu, method, path, body=None, headers=None, timeout=30):
    """emu.request with retries for transport errors (faults may be on)."""
    import http.client
    last = None
    for _ in range(60):
        try:
            return emu.request(method, path, body=body, headers=headers, timeout=timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            last = e  # a reset or a cut body (--reset-rate): ask again
        except RuntimeError as e:
            last = e  # the test's own token exchange hit an injected fault
        time.sleep(0.3)
    raise RuntimeError("request %s %s kept failing: %r" % (method, path, last))


def qido_instances(emu, store_name=STORE_NAME, page=200):
    """Every SOP Instance UID in the store (with repeats if the store holds
    duplicates), read with QIDO-RS paging (limit/offset) straight from the
    emulator. Retries faulted pages (429/5xx/garbled bodies)."""
    uids = []
    offset = 0
    while True:
        path = "/v1/%s/dicomWeb/instances?includefield=00080018&limit=%d&offset=%d" % (
            store_name, page, offset)
        for attempt in range(40):
            status, _, body = _request(emu, "GET", path,
                                       headers={"Accept": "application/dicom+json"})
            if status == 204:
                items = []
                break
            if status == 200:
                try:
                    items = json.loads(body) if body.strip() else []
                    break
                except ValueError:
                    pass  # a garbled body from --malformed-rate: ask again
            elif status not in (429, 500, 502, 503, 504):
                raise AssertionError("QIDO %s -> HTTP %d: %r" % (path, status, body[:300]))
            time.sleep(0.2)
        else:
            raise AssertionError("QIDO %s kept failing" % path)
        for it in items:
            v = it.get("00080018", {}).get("Value", [])
            uids.extend(v)
        if len(items) < page:
            return uids
        offset += len(items)


def paged_names(emu, path, items_key, what):
    """Names of every item of a paged list (pageToken) at path, which already
    carries its query; a faulted page (429/5xx, garbled JSON) is fetched again."""
    names = []
    token = ""
    while True:
        url = path + ("&pageToken=" + urllib.parse.quote(token, safe="") if token else "")
        for _ in range(40):
            status, _, body = _request(emu, "GET", url)
            if status == 200:
                try:
                    doc = json.loads(body)
                    break
                except ValueError:
                    pass
            elif status not in (429, 500, 502, 503, 504):
                raise AssertionError("%s -> HTTP %d: %r" % (what, status, body[:300]))
            time.sleep(0.2)
        else:
            raise AssertionError("%s kept failing" % what)
        names += [item["name"] for item in doc.get(items_key, [])]
        token = doc.get("nextPageToken", "")
        if not token:
            return names


def operations_list(emu, dataset_name=DATASET_NAME):
    """Names of every operation of the dataset (operations.list, paged)."""
    return paged_names(emu, "/v1/%s/operations?pageSize=100" % dataset_name, "operations",
                       "operations.list")


def set_faults(emu, fail_rate=None, reset_rate=None, malformed_rate=None, latency_ms=None):
    q = {}
    for k, v in (("fail_rate", fail_rate), ("reset_rate", reset_rate),
                 ("malformed_rate", malformed_rate), ("latency_ms", latency_ms)):
        if v is not None:
            q[k] = str(v)
    status, _, body = _request(emu, "POST", "/_emulator/faults?" + urllib.parse.urlencode(q))
    assert status == 200, body
    return json.loads(body)


def faults_off(emu):
    return set_faults(emu, 0, 0, 0, 0)


def try_check_exactly_once(emu, expected_uids, allowed_uids=None):
    """check_exactly_once, but a failing store query becomes a finding
    ("error") instead of an exception, so the caller can still report its
    figures and the more telling failure (e.g. the wait's exit status)."""
    try:
        return check_exactly_once(emu, expected_uids, allowed_uids)
    except (AssertionError, RuntimeError) as e:
        return {"missing": None, "duplicates": None, "stray": None, "stored": None,
                "error": str(e)[:500]}


def assert_store_ok(found, what="accepted"):
    assert "error" not in found, "cannot read the store: " + found.get("error", "")
    assert found["missing"] == [], "%d %s files are not in the store: %s" % (
        len(found["missing"]), what, found["missing"][:10])
    assert found["duplicates"] == [], "instances stored twice: %s" % found["duplicates"][:10]
    assert found["stray"] == [], "instances nobody copied: %s" % found["stray"][:10]


def n_or_none(v):
    return None if v is None else len(v)


def check_exactly_once(emu, expected_uids, allowed_uids=None):
    """Compares the store with what must be there. expected_uids: every one
    must be present exactly once. allowed_uids: a superset that may also be
    present (files whose copy failed but may still have landed); any UID
    outside it is a stray. Returns a dict of findings (empty lists = good)."""
    got = collections.Counter(qido_instances(emu))
    allowed = set(allowed_uids if allowed_uids is not None else expected_uids)
    allowed |= set(expected_uids)
    missing = sorted(u for u in expected_uids if got[u] == 0)
    dup = sorted(u for u, c in got.items() if c > 1)
    stray = sorted(u for u in got if u not in allowed)
    return {"missing": missing, "duplicates": dup, "stray": stray, "stored": sum(got.values())}


# --------------------------------------------------------------- mounts

from mount_fixture import is_mounted  # noqa: E402,F401 (used as ru.is_mounted)


def mount_options(path):
    """The options column of /proc/mounts for path, or None."""
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 3 and parts[1] == path:
                return parts[0], parts[2], parts[3].split(",")
    return None


def fusermount_u(path, lazy=False):
    args = ["fusermount3", "-uz" if lazy else "-u", path]
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)


class Mount:
    """A dicomfs process in the foreground on a fresh mountpoint.

    dicomfs SOURCE MNT -f -o staging=...,cache_dir=...,credentials=...,endpoint=...
    stderr goes to a log file (self.log_path, appended across remounts)."""

    def __init__(self, emu, cache_dir=None, source=LOCATION_NAME, staging=None,
                 commit_delay=1, uploads=None, debug=False, extra_opts=(), endpoint=None,
                 storage_endpoint=None, credentials=None, env=None, wait_ready=True,
                 ready_timeout=30):
        self.emu = emu
        self.tmp = tempfile.mkdtemp(prefix="dicomfs-res.")
        self.mnt = os.path.join(self.tmp, "mnt")
        os.mkdir(self.mnt)
        self.cache_dir = cache_dir or os.path.join(self.tmp, "cache")
        self.source = source
        self.staging = staging or "gs://%s/dicomfs-%d" % (BUCKET, random.randrange(1 << 30))
        self.commit_delay = commit_delay
        self.uploads = uploads
        self.debug = debug
        self.extra_opts = list(extra_opts)
        self.endpoint = endpoint if endpoint is not None else emu.url + "/"
        self.storage_endpoint = storage_endpoint if storage_endpoint is not None else emu.url
        self.credentials = credentials if credentials is not None else emu.credentials
        self.env = env
        self.log_path = os.path.join(self.tmp, "dicomfs.log")
        self.proc = None
        self.kills = 0
        self.rc = None
        if wait_ready:
            self.start(ready_timeout=ready_timeout)

    # -- paths
    @property
    def dataset_dir(self):
        return os.path.join(self.mnt, DATASET) if self.source == LOCATION_NAME else self.mnt

    @property
    def store_dir(self):
        return os.path.join(self.dataset_dir, STORE)

    @property
    def import_dir(self):
        return os.path.join(self.store_dir, "import")

    def args(self, commit_delay=None):
        opts = ["staging=" + self.staging, "cache_dir=" + self.cache_dir,
                "endpoint=" + self.endpoint, "storage_endpoint=" + self.storage_endpoint,
                "commit_delay=%s" % (commit_delay if commit_delay is not None
                                     else self.commit_delay)]
        if self.credentials:
            opts.append("credentials=" + self.credentials)
        if self.uploads:
            opts.append("uploads=%d" % self.uploads)
        opts += self.extra_opts
        a = [dicomfs_binary(), self.source, self.mnt, "-f", "-o", ",".join(opts)]
        if self.debug:
            a.append("-d")
        return a

    def _env(self):
        env = dict(os.environ)
        # Only what we pass: no credentials or endpoints from the outside.
        for k in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                  "CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE", "GCE_METADATA_HOST",
                  "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
            env.pop(k, None)
        env["HOME"] = self.tmp
        # A crash or a leak report must not hide as a clean exit.
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
        if self.env:
            env.update(self.env)
        return env

    def start(self, commit_delay=None, ready_timeout=30):
        """Starts dicomfs and waits until the mount is live. Raises with the log
        on failure."""
        self._log = open(self.log_path, "ab")
        self._log.write(("\n==== start %s\n" % " ".join(self.args(commit_delay))).encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.args(commit_delay), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log, env=self._env())
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.rc = self.proc.returncode
                self._close_log()
                raise RuntimeError("dicomfs exited %d before mounting:\n%s"
                                   % (self.rc, self.log_tail()))
            if is_mounted(self.mnt):
                try:
                    os.listdir(self.mnt)
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        # Hung: end it by PID so that it cannot mount behind our back.
        self.proc.kill()
        self.proc.wait()
        self.rc = None
        if is_mounted(self.mnt):
            fusermount_u(self.mnt, lazy=True)
        self._close_log()
        raise RuntimeError("dicomfs did not mount within %ss:\n%s" % (ready_timeout,
                                                                      self.log_tail()))

    def try_start(self, commit_delay=None, ready_timeout=30):
        """Like start, but returns (ok, message) instead of raising."""
        try:
            self.start(commit_delay=commit_delay, ready_timeout=ready_timeout)
            return True, ""
        except RuntimeError as e:
            return False, str(e)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=60):
        return "\n".join(self.log().splitlines()[-n:])

    def kill9(self, before_unmount=None):
        """SIGKILL by PID, then a lazy unmount of the dead mount.
        before_unmount() runs while the dead mount still answers ENOTCONN:
        stop writers there, or they would write into the bare mountpoint
        directory once it is unmounted."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.kills += 1
        if self.proc:
            self.proc.wait(timeout=30)
        if before_unmount:
            before_unmount()
        fusermount_u(self.mnt, lazy=True)
        deadline = time.monotonic() + 10
        while is_mounted(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._close_log()

    def remount(self, commit_delay=None, ready_timeout=30):
        """After kill9 or unmount: the same cache_dir, staging and mountpoint."""
        assert not self.alive()
        return self.start(commit_delay=commit_delay, ready_timeout=ready_timeout)

    def unmount(self, timeout=60):
        """fusermount3 -u, wait for the process; returns its exit code. Falls
        back to a lazy unmount and SIGKILL (then returns None)."""
        if self.proc is None:
            return None
        if self.alive() and is_mounted(self.mnt):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if fusermount_u(self.mnt).returncode == 0:
                    break
                time.sleep(0.3)
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.rc = None
        if is_mounted(self.mnt):
            fusermount_u(self.mnt, lazy=True)
        self._close_log()
        return self.rc

    def _close_log(self):
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def close(self):
        if self.proc is not None and (self.alive() or is_mounted(self.mnt)):
            self.unmount(timeout=30)
        if is_mounted(self.mnt):
            fusermount_u(self.mnt, lazy=True)
        self._close_log()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- store helpers
    def status(self):
        """STORE/status as (dict of counters, list of 'failed:' lines)."""
        with open(os.path.join(self.store_dir, "status"), "rb") as f:
            text = f.read().decode(errors="replace")
        counts, failed = {}, []
        for line in text.splitlines():
            k, sep, v = line.partition(": ")
            if sep and v.isdigit():
                counts[k] = int(v)
            elif line.startswith("failed: "):
                failed.append(line)
        return counts, failed

    def wait(self, timeout=180):
        """`dicomfs wait STORE`: returns (exit code, output). Exit code None on
        timeout (the process is killed)."""
        p = subprocess.Popen([dicomfs_binary(), "wait", self.store_dir], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env())
        try:
            out, _ = p.communicate(timeout=timeout)
            return p.returncode, out.decode(errors="replace")
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            return None, out.decode(errors="replace")


# --------------------------------------------------------------- copying

def cp_r(src_root, dst_dir, timeout=300):
    """cp -r SRC/. DST: returns (exit code, stderr)."""
    p = subprocess.run(["cp", "-r", src_root + "/.", dst_dir], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stderr.decode(errors="replace")


class CopyLoop(threading.Thread):
    """Copies files one `cp` process each, in order, recording exactly which
    returned 0 (accepted) and which did not (with cp's stderr). Parent
    directories are created with `mkdir -p` first. stop() ends it after the
    current file; it also stops by itself after max_failures failures in a
    row (a dead mount fails everything)."""

    def __init__(self, src_root, rels, dst_dir, max_failures=5, pause=0.0):
        super().__init__(daemon=True)
        self.src_root = src_root
        self.rels = list(rels)
        self.dst_dir = dst_dir
        self.max_failures = max_failures
        self.pause = pause
        self.accepted = []
        self.failed = []  # (rel, rc, stderr)
        self.attempted = []
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def stop(self):
        self._halt.set()

    def n_accepted(self):
        with self._lock:
            return len(self.accepted)

    def run(self):
        streak = 0
        made = set()
        for rel in self.rels:
            if self._halt.is_set() or streak >= self.max_failures:
                break
            dst = os.path.join(self.dst_dir, rel)
            parent = os.path.dirname(dst)
            with self._lock:
                self.attempted.append(rel)
            if parent not in made:
                p = subprocess.run(["mkdir", "-p", parent], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=60)
                if p.returncode == 0:
                    made.add(parent)
            try:
                p = subprocess.run(["cp", os.path.join(self.src_root, rel), dst],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
                rc, err = p.returncode, p.stderr.decode(errors="replace")
            except subprocess.TimeoutExpired:
                rc, err = None, "cp timed out"
            with self._lock:
                if rc == 0:
                    self.accepted.append(rel)
                    streak = 0
                else:
                    self.failed.append((rel, rc, err))
                    streak += 1
            if self.pause:
                time.sleep(self.pause)


def file_state(path, timeout=30):
    """user.dicomfs.state of a file under import/ (pending, uploaded,
    importing, imported, present, failed), read in a child process so that
    a hung mount cannot hang the test."""
    p = subprocess.run(["/usr/bin/python3", "-c",
                        "import os, sys; sys.stdout.write(os.getxattr(sys.argv[1], "
                        "'user.dicomfs.state').decode())", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout.decode()


def count_files(root):
    n = 0
    for _, _, files in os.walk(root):
        n += len(files)
    return n


def wait_until(pred, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except OSError:
            pass
        time.sleep(interval)
    return False


# --------------------------------------------------------------- tmpfs

class Tmpfs:
    """mount -t tmpfs -o size=SIZE tmpfs DIR (needs root); umount on close."""

    def __init__(self, size="8m"):
        self.dir = tempfile.mkdtemp(prefix="dicomfs-tmpfs.")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs",
                            self.dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            os.rmdir(self.dir)
            raise RuntimeError("mount tmpfs failed: %s" % p.stderr.decode())

    def close(self):
        for _ in range(20):
            if subprocess.run(["umount", self.dir], stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", self.dir], stderr=subprocess.DEVNULL)
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def write_file(path, data):
    """open/write/close like an application: returns None on success or the
    OSError (errno from open, write or close)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        return e
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        try:
            os.close(fd)
        except OSError:
            pass
        return e
    try:
        os.close(fd)
    except OSError as e:
        return e
    return None


def errno_name(e):
    if e is None:
        return "ok"
    return errno.errorcode.get(e.errno, str(e.errno))


# --------------------------------------------------------------- fixtures
# Imported by the suites (from resilience_util import res_mounts): pytest
# picks fixtures from a test module's globals.

import pytest  # noqa: E402


@pytest.fixture
def res_mounts():
    """res_mounts(emu, **Mount kwargs) -> a started Mount; every mount is
    unmounted (or killed by PID and lazily unmounted) and its temp dir removed
    at the end of the test."""
    made = []

    def make(emu, start=True, **kw):
        m = Mount(emu, wait_ready=False, **kw)
        made.append(m)
        if start:
            m.start()
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def tmpfs_factory():
    made = []

    def make(size="8m"):
        t = Tmpfs(size)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def copy_and_catch_mid_upload(emulator_factory, res_mounts, src, commit_delay):
    """An emulator whose uploads are slow (150 ms fault latency on /upload/ only), a
    mount with 4 upload threads, 200 files copied in with cp -r, then a wait
    until the status shows some files uploaded and others still pending: the
    moment the crash and restart suites strike. Returns (emulator, mount,
    files, status counters at that moment)."""
    emu = emulator_factory("--fault-latency-ms", "150", "--fault-paths", "/upload/")
    files = make_tree(src, 200, studies=4)
    m = res_mounts(emu, commit_delay=commit_delay, uploads=4)
    rc, err = cp_r(src, m.import_dir)
    assert rc == 0, err
    seen = {}

    def mid_upload():
        c, _ = m.status()
        seen.update(c)
        return c.get("uploaded", 0) >= 10 and c.get("spooled", 0) + c.get("uploading", 0) > 0

    assert wait_until(mid_upload, 120), "status never showed uploads in progress: %r\n%s" % (
        seen, m.log_tail())
    return emu, m, files, dict(seen)
