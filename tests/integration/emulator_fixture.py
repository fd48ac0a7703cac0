"""pytest fixtures for a running dicomfs-emulator.

`emulator` (function scope) starts one emulator with a temp data dir, a
service-account key (--write-credentials), the DICOM store
test-project/us-central1/ds/store and the bucket `staging`.
`emulator_factory(*extra_args, **kw)` starts more, with extra arguments
(faults, --lro-delay, --no-auth ...).

An Emulator exposes .url, .port, .env (the variables from its export line),
.data_dir, .credentials, .token() (a JWT-bearer exchange signed with the
written key), .jwt(), .stats(), .restart() and .stop().

The binary is $DICOMFS_BUILD/contrib/emulator/dicomfs-emulator
(DICOMFS_BUILD defaults to <repo>/build-san).

$DICOMFS_EMU_ARGS (shlex-split) is added to every emulator started here, so
that the whole suite runs under a service profile, e.g.
DICOMFS_EMU_ARGS="--profile realistic --time-scale 0.05". Its words come
before a test's own extra arguments: what a test sets explicitly wins.
"""
import base64
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY_TIMEOUT = 20.0


def emulator_binary():
    build = os.environ.get("DICOMFS_BUILD", os.path.join(REPO, "build-san"))
    return os.path.join(build, "contrib", "emulator", "dicomfs-emulator")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(private_key_pem, claims, kid=None):
    """RS256 JWT, signed with the `cryptography` package."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    header = {"alg": "RS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    )
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


DEFAULT_ARGS = [
    "--project", "test-project", "--location", "us-central1",
    "--dataset", "ds", "--store", "store", "--bucket", "staging",
]


class Emulator:
    def __init__(self, extra_args=(), data_dir=None, credentials=True, defaults=True):
        self.tmp = tempfile.mkdtemp(prefix="dicomfs-emu-test.")
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.credentials = os.path.join(self.tmp, "credentials.json") if credentials else None
        self.extra_args = list(extra_args)
        self.defaults = defaults
        self.port = 0
        self.proc = None
        self.env = {}
        self.url = None
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self._token = None
        self.start()

    # -- process control --
    def _args(self):
        args = [emulator_binary(), "--listen", "127.0.0.1:%d" % self.port, "--data", self.data_dir]
        if self.credentials:
            args += ["--write-credentials", self.credentials]
        if self.defaults:
            args += DEFAULT_ARGS
        args += shlex.split(os.environ.get("DICOMFS_EMU_ARGS", ""))
        return args + self.extra_args

    def start(self):
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self._args(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        lines = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if not r:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(line.decode())
            if any(l.startswith("dicomfs-emulator ready on ") for l in lines):
                break
        ready = [l for l in lines if l.startswith("dicomfs-emulator ready on ")]
        if not ready:
            self.stop()
            raise RuntimeError("emulator did not become ready: stdout=%r stderr=%s"
                               % (lines, self.stderr()))
        self.url = ready[0].split(" on ", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        exports = [l for l in lines if l.startswith("export ")]
        self.export_line = exports[0] if exports else ""
        self.env = dict(kv.split("=", 1) for kv in self.export_line[len("export "):].split())
        self._token = None

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM by PID, wait, SIGKILL as a fallback. Returns the exit code."""
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        elif self.proc:
            rc = self.proc.returncode
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        if getattr(self, "_stderr", None):
            self._stderr.close()
            self._stderr = None
        return rc

    def restart(self, extra_args=None):
        """Stops (SIGTERM) and starts again on the same data dir and port."""
        rc = self.stop()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return rc
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- auth --
    def key(self):
        with open(self.credentials) as f:
            return json.load(f)

    def jwt(self, key=None, **overrides):
        k = key or self.key()
        now = int(time.time())
        claims = {
            "iss": k["client_email"],
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "aud": k["token_uri"],
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return sign_jwt(k["private_key"], claims, kid=k.get("private_key_id"))

    def exchange(self, assertion):
        """POSTs a JWT-bearer grant; returns (status, parsed JSON body)."""
        body = urllib.parse.urlencode({
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": assertion,
        }).encode()
        req = urllib.request.Request(self.url + "/token", data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def token(self, fresh=False):
        if self._token and not fresh:
            return self._token
        status, body = self.exchange(self.jwt())
        if status != 200:
            raise RuntimeError("token exchange failed: %s %r" % (status, body))
        self._token = body["access_token"]
        return self._token

    def auth_headers(self):
        return {"Authorization": "Bearer " + self.token()}

    # -- convenience --
    def request(self, method, path, body=None, headers=None, auth=True, timeout=30):
        """Returns (status, headers, body bytes); never raises on HTTP errors."""
        h = dict(headers or {})
        if auth and self.credentials:
            h.setdefault("Authorization", "Bearer " + self.token())
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def stats(self):
        status, _, body = self.request("GET", "/_emulator/stats", auth=False)
        assert status == 200
        return json.loads(body)


@pytest.fixture
def emulator_factory():
    started = []

    def make(*extra_args, **kw):
        emu = Emulator(extra_args=extra_args, **kw)
        started.append(emu)
        return emu

    yield make
    problems = []
    for emu in started:
        rc = emu.stop()
        log = emu.stderr()
        if rc not in (0, None) or "Sanitizer" in log or "runtime error:" in log:
            problems.append("emulator on %s exited %s:\n%s" % (emu.url, rc, log[-4000:]))
        emu.close()
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def emulator(emulator_factory):
    return emulator_factory()
