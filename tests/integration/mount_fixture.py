"""A real dicomfs mount of the emulator, for the integration tests.

Fixtures:
  mount_factory(source=None, staging=..., options=(), ...) -> DicomfsMount
  dicomfs_mount  -> a mount of projects/test-project/locations/us-central1
  hc_api         -> ApiClient: direct Healthcare / Cloud Storage calls to the
                    emulator (to set up data and to check what dicomfs did)

dicomfs runs in the foreground (-f) as a subprocess with its stderr in a log
file (mount.log_text() shows it; it is printed when a test fails to mount).
Cleanup: fusermount3 -u, wait for the PID (killed by PID after a timeout),
temp dirs removed. DicomfsMount.remount() keeps the same cache_dir.
"""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("DICOMFS_BUILD") or os.path.join(TOP, "build-san")
DICOMFS = os.path.join(BUILD, "fs", "dicomfs")

PROJECT = "test-project"
LOCATION = "us-central1"
LOCATION_NAME = f"projects/{PROJECT}/locations/{LOCATION}"
STAGING = "gs://staging/dicomfs"


def _attr(obj, *names, default=None):
    """First non-empty attribute (or dict key) of the emulator fixture."""
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if callable(v) and n not in ("token",):
            try:
                v = v()
            except TypeError:
                continue
        if v:
            return v
    return default


def emulator_endpoints(emu):
    """(healthcare_endpoint, storage_endpoint, credentials_file or None)."""
    base = _attr(emu, "base_url", "url", "endpoint")
    assert base, "the emulator fixture exposes no base URL"
    base = base.rstrip("/")
    hc = _attr(emu, "healthcare_endpoint", "hc_endpoint", default=base + "/")
    st = _attr(emu, "storage_endpoint", "gcs_endpoint", default=base)
    creds = _attr(emu, "credentials", "credentials_file", "key_file", "credentials_path")
    return hc, st, creds


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ApiClient:
    """Minimal REST client for the emulator (urllib; token via the key file)."""

    def __init__(self, emu):
        self.emu = emu
        hc, st, creds = emulator_endpoints(emu)
        self.hc = hc.rstrip("/")
        if self.hc.endswith("/v1"):
            self.hc = self.hc[:-3]
        self.st = st.rstrip("/")
        self.creds = creds
        self._token = None
        self._token_exp = 0

    # -- auth
    def token(self):
        t = _attr(self.emu, "access_token", "token")
        if callable(t):
            t = t()
        if t:
            return t
        if not self.creds:
            return None
        if self._token and time.time() < self._token_exp - 60:
            return self._token
        with open(self.creds) as f:
            key = json.load(f)
        if key.get("type") != "service_account":
            return None
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": key.get("private_key_id", "")}
        claims = {
            "iss": key["client_email"],
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "aud": key["token_uri"],
            "iat": now,
            "exp": now + 3600,
        }
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        pk = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
        sig = pk.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        assertion = signing_input + "." + _b64url(sig)
        body = urllib.parse.urlencode({
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": assertion,
        }).encode()
        req = urllib.request.Request(key["token_uri"], data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(req, timeout=30) as r:
            tok = json.load(r)
        self._token = tok["access_token"]
        self._token_exp = time.time() + int(tok.get("expires_in", 3600))
        return self._token

    # -- raw
    def request(self, method, url, body=None, content_type="application/json", raw=False):
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        tok = self.token()
        if tok:
            req.add_header("Authorization", "Bearer " + tok)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                payload = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            payload = e.read()
            status = e.code
        if raw:
            return status, payload
        if status >= 400:
            raise RuntimeError(f"{method} {url}: HTTP {status}: {payload[:500]!r}")
        return json.loads(payload) if payload.strip() else {}

    def hc_url(self, path, version="v1"):
        return f"{self.hc}/{version}/{path}"

    # -- Healthcare
    def list_datasets(self, location=LOCATION_NAME):
        out, token = [], None
        while True:
            q = "?pageSize=1000" + (f"&pageToken={urllib.parse.quote(token)}" if token else "")
            page = self.request("GET", self.hc_url(f"{location}/datasets") + q)
            out += [d["name"] for d in page.get("datasets", [])]
            token = page.get("nextPageToken")
            if not token:
                return out

    def list_stores(self, dataset):
        out, token = [], None
        while True:
            q = "?pageSize=1000" + (f"&pageToken={urllib.parse.quote(token)}" if token else "")
            page = self.request("GET", self.hc_url(f"{dataset}/dicomStores") + q)
            out += [s["name"] for s in page.get("dicomStores", [])]
            token = page.get("nextPageToken")
            if not token:
                return out

    def create_dataset(self, ds_id, location=LOCATION_NAME):
        op = self.request("POST", self.hc_url(f"{location}/datasets") +
                          f"?datasetId={urllib.parse.quote(ds_id)}", {})
        if "name" in op and "/operations/" in op["name"]:
            self.wait_operation(op["name"])
        return f"{location}/datasets/{ds_id}"

    def create_store(self, dataset, store_id):
        self.request("POST", self.hc_url(f"{dataset}/dicomStores") +
                     f"?dicomStoreId={urllib.parse.quote(store_id)}", {})
        return f"{dataset}/dicomStores/{store_id}"

    def get_operation_raw(self, name):
        status, payload = self.request("GET", self.hc_url(name), raw=True)
        assert status == 200, (status, payload)
        return payload

    def get_operation(self, name):
        return json.loads(self.get_operation_raw(name))

    def list_operations(self, dataset):
        out, token = [], None
        while True:
            q = "?pageSize=1000" + (f"&pageToken={urllib.parse.quote(token)}" if token else "")
            page = self.request("GET", self.hc_url(f"{dataset}/operations") + q)
            out += page.get("operations", [])
            token = page.get("nextPageToken")
            if not token:
                return out

    def wait_operation(self, name, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            op = self.get_operation(name)
            if op.get("done"):
                return op
            time.sleep(0.2)
        raise TimeoutError(f"operation {name} not done after {timeout}s")

    def import_gcs(self, store, uri):
        op = self.request("POST", self.hc_url(f"{store}:import"), {"gcsSource": {"uri": uri}})
        return op["name"]

    def export_gcs(self, store, uri_prefix, mime_type=None):
        dest = {"uriPrefix": uri_prefix}
        if mime_type:
            dest["mimeType"] = mime_type
        op = self.request("POST", self.hc_url(f"{store}:export"), {"gcsDestination": dest})
        return op["name"]

    # -- Cloud Storage
    def upload(self, bucket, name, data, content_type="application/octet-stream"):
        url = (f"{self.st}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
               f"?uploadType=media&name={urllib.parse.quote(name, safe='')}")
        return self.request("POST", url, bytes(data), content_type=content_type)

    def list_objects(self, bucket, prefix=""):
        out, token = [], None
        while True:
            q = f"?prefix={urllib.parse.quote(prefix, safe='')}"
            if token:
                q += f"&pageToken={urllib.parse.quote(token)}"
            page = self.request("GET", f"{self.st}/storage/v1/b/{bucket}/o{q}")
            out += page.get("items", [])
            token = page.get("nextPageToken")
            if not token:
                return out

    def download(self, bucket, name):
        url = (f"{self.st}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
               f"{urllib.parse.quote(name, safe='')}?alt=media")
        status, payload = self.request("GET", url, raw=True)
        assert status == 200, (status, payload[:200])
        return payload


def is_mounted(path):
    """path is a mount point in /proc/mounts. Also true of a dead FUSE mount
    (its daemon killed), which os.path.ismount misses as soon as the root's
    cached attributes expire (stat then fails with ENOTCONN): the mount was
    then left behind and the next mount on it failed."""
    path = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[1].encode().decode("unicode_escape") == path:
                    return True
    except OSError:
        pass
    return False


class DicomfsMount:
    def __init__(self, emu, workdir, source=LOCATION_NAME, staging=STAGING, options=(),
                 credentials=None, endpoint=None, storage_endpoint=None, env=None):
        self.emu = emu
        self.workdir = workdir
        self.source = source
        self.staging = staging
        self.extra = list(options)
        hc, st, creds = emulator_endpoints(emu)
        self.endpoint = endpoint or hc
        self.storage_endpoint = storage_endpoint or st
        self.credentials = credentials if credentials is not None else creds
        self.env = env
        self.mnt = os.path.join(workdir, "mnt")
        self.cache_dir = os.path.join(workdir, "cache")
        self.log_path = os.path.join(workdir, "dicomfs.log")
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = None
        self._log = None
        self.exit_codes = []

    def argv(self):
        opts = [f"staging={self.staging}", f"cache_dir={self.cache_dir}",
                f"endpoint={self.endpoint}", f"storage_endpoint={self.storage_endpoint}",
                "commit_delay=1"]
        if self.credentials:
            opts.append(f"credentials={self.credentials}")
        else:
            opts.append("no_auth")
        opts += self.extra
        return [DICOMFS, self.source, self.mnt, "-f", "-o", ",".join(opts)]

    def start(self, timeout=30):
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.ismount(self.mnt):  # mounted and answering
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.log_text()
        self.stop()
        raise RuntimeError(f"dicomfs did not mount {self.mnt}; log:\n{log}")

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=20):
        """Unmounts and waits for dicomfs; returns its exit code (None if killed)."""
        rc = None
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                rc = None
            self.exit_codes.append(rc)
            self.proc = None
        if is_mounted(self.mnt):  # the process died without unmounting
            subprocess.run(["fusermount3", "-uz", self.mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if self._log:
            self._log.close()
            self._log = None
        return rc

    def problems(self):
        """Unclean exits or sanitizer reports over every run of this mount."""
        out = []
        if any(rc != 0 for rc in self.exit_codes):
            out.append(f"dicomfs exit codes {self.exit_codes}")
        log = self.log_text()
        if "Sanitizer" in log or "runtime error:" in log:
            out.append("sanitizer report in the log")
        return out

    def remount(self):
        self.stop()
        return self.start()


@pytest.fixture
def hc_api(emulator):
    return ApiClient(emulator)


@pytest.fixture
def mount_factory(emulator, request):
    mounts, dirs = [], []

    def make(**kw):
        d = tempfile.mkdtemp(prefix="dicomfs-mnt-")
        dirs.append(d)
        m = DicomfsMount(emulator, d, **kw)
        mounts.append(m)
        try:
            return m.start()
        except RuntimeError:
            raise

    yield make
    failed = getattr(request.node, "rep_call", None)
    problems = []
    for m in reversed(mounts):
        m.stop()
        p = m.problems()
        if p:
            problems.append(f"{m.mnt}: {'; '.join(p)}\n{m.log_text()[-4000:]}")
        elif failed is not None and failed.failed:
            print(f"--- dicomfs log ({m.log_path}) ---\n{m.log_text()[-4000:]}")
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def dicomfs_mount(mount_factory):
    return mount_factory()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def run_dicomfs(args, timeout=60, env=None):
    """Runs dicomfs expecting it to exit (e.g. a failed check before mounting).
    If it mounted instead, it is unmounted and stopped, and the result says so."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen([DICOMFS] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=e)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        mnt = args[1] if len(args) > 1 else None
        if mnt and is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", mnt])
        p.kill()
        out, err = p.communicate()
        return None, out.decode(errors="replace"), err.decode(errors="replace")
