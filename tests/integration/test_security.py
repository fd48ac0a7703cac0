"""Suite 6 of the issue, secure defaults, checked on the running programs:
TLS verification for https endpoints, no token/key/assertion bytes in the
daemon's log even with -d, a private cache (0700) and spool files (0600),
a warning for a credentials file others can read, no allow_other unless
asked, and the emulator listening on 127.0.0.1 by default.
"""
import os
import signal
import re
import select
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time

import resilience_util as ru
from resilience_util import res_mounts  # noqa: F401  (fixture)


class SelfSignedTLSServer(threading.Thread):
    """A TLS server on 127.0.0.1 with a fresh self-signed certificate (made
    with openssl). Counts completed handshakes and failed ones; answers any
    request it gets with a 200 JSON body (a client that skips verification
    would get that far)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.dir = tempfile.mkdtemp(prefix="dicomfs-tls.")
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", self.key, "-out", self.cert], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert, self.key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes_ok = 0
        self.handshakes_failed = 0
        self.requests = 0
        self.errors = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if not r:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.handshakes_failed += 1
                self.errors.append(str(e))
                conn.close()
                continue
            self.handshakes_ok += 1
            try:
                data = tls.recv(65536)
                if data:
                    self.requests += 1
                    body = b"{}"
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 2\r\nConnection: close\r\n\r\n" + body)
            except OSError:
                pass
            finally:
                tls.close()

    def close(self):
        self._halt.set()
        self.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_tls_verification_on(emulator, res_mounts):  # noqa: F811
    srv = SelfSignedTLSServer()
    srv.start()
    try:
        url = "https://127.0.0.1:%d" % srv.port
        m = res_mounts(emulator, start=False, endpoint=url + "/", storage_endpoint=url)
        ok, msg = m.try_start(ready_timeout=90)
        mounted = ru.is_mounted(m.mnt)
        cert_lines = [ln for ln in m.log().splitlines()
                      if re.search(r"certificate", ln, re.I) and not ln.startswith("====")]
        ru.record_figures("tls-verify", None, handshakes_ok=srv.handshakes_ok,
                          log_line=(cert_lines or [""])[0][:200],
                          handshakes_failed=srv.handshakes_failed, requests=srv.requests)
        assert not ok and not mounted, \
            "dicomfs mounted an https endpoint with a self-signed certificate:\n" + m.log_tail()
        assert m.rc is not None and m.rc > 0, "dicomfs ended by a signal: %r" % m.rc
        assert cert_lines, "no certificate error in the log:\n" + m.log_tail()
        assert srv.handshakes_failed >= 1, "dicomfs never tried the https endpoint"
        assert srv.handshakes_ok == 0 and srv.requests == 0, \
            "dicomfs completed a TLS handshake with an untrusted certificate"
    finally:
        srv.close()


SECRET_PATTERNS = [
    (re.compile(r"ya29\.[A-Za-z0-9._-]+"), "an access token (ya29.)"),
    (re.compile(r"Bearer\s+[A-Za-z0-9._~+/-]{8,}"), "a bearer credential"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
     "a JWT assertion"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a PEM private key header"),
    (re.compile(r"assertion=[A-Za-z0-9._-]{10,}"), "a JWT-bearer grant body"),
    (re.compile(r"refresh_token[\"'=: ]+[A-Za-z0-9._/-]{10,}"), "a refresh token"),
]


def test_no_secrets_in_debug_log(emulator_factory, res_mounts, tmp_path):
    # Short tokens: several grants and refreshes happen during the run.
    emu = emulator_factory("--token-ttl", "5")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 20, studies=2)
    m = res_mounts(emu, debug=True, commit_delay=1)
    loop = ru.CopyLoop(src, files, m.import_dir, pause=0.4)
    loop.run()
    assert loop.failed == [], loop.failed[:3]
    wrc, _ = m.wait(timeout=120)
    for d in (os.path.join(m.store_dir, "operations"), os.path.join(m.dataset_dir, "operations")):
        for fn in os.listdir(d):
            with open(os.path.join(d, fn), "rb") as f:
                f.read()
    time.sleep(6)  # one more token lifetime while idle
    try:  # more traffic for the log (studies/ itself is tested elsewhere)
        os.listdir(os.path.join(m.store_dir, "studies"))
    except OSError:
        pass
    minted = emu.token(fresh=True)  # a token in the emulator's format, for the grep
    key = emu.key()
    grants = emu.stats().get("byKind", {}).get("token", 0)
    m.unmount()
    log = m.log()
    key_lines = [ln for ln in key["private_key"].splitlines()
                 if ln and not ln.startswith("-----") and len(ln) >= 16]
    found = []
    for rx, what in SECRET_PATTERNS:
        mt = rx.search(log)
        if mt:
            found.append((what, mt.group(0)[:24] + "..."))
    if minted in log:
        found.append(("the minted token", minted[:12]))
    leaked_key_lines = [ln for ln in key_lines if ln in log]
    n_lines = len(log.splitlines())
    ru.record_figures("no-secrets-in-log", None, log_lines=n_lines,
                      log_bytes=len(log), findings=len(found) + len(leaked_key_lines),
                      token_requests=grants)
    assert wrc == 0
    assert grants >= 3, "too few token grants (%d) for a meaningful check" % grants
    assert n_lines > 100, "the -d log is too short to mean anything (%d lines)" % n_lines
    assert re.search(r"(?i)unique:|opcode|LOOKUP|getattr|debug", log), \
        "no debug output in the log: -d did not take effect"
    assert found == [], "secrets in the daemon log: %r" % found
    assert leaked_key_lines == [], "%d lines of the private key in the log" % len(leaked_key_lines)


def test_cache_dir_and_spool_modes(emulator, res_mounts, tmp_path):  # noqa: F811
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 10, studies=1)
    # A cache dir that exists and is too open: dicomfs must make it private or refuse.
    cache = str(tmp_path / "cache")
    os.mkdir(cache)
    os.chmod(cache, 0o755)
    m = res_mounts(emulator, start=False, cache_dir=cache, commit_delay=60)
    ok, msg = m.try_start()
    if not ok:
        assert re.search(r"cache", msg), "refused an open cache dir without saying why:\n" + msg
        os.chmod(cache, 0o700)
        m.start()
    # The server stops answering while the files are copied in, so their
    # spool files stay (a file's spool space is released once its staged
    # object is verified); copying into import/ needs no network. The store
    # must be known first: a lookup that reaches the stopped server fails with
    # EIO after timeout= unless an earlier answer can be served stale.
    p = subprocess.run(["stat", m.import_dir], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    os.kill(emulator.proc.pid, signal.SIGSTOP)
    try:
        rc, err = ru.cp_r(src, m.import_dir)
        assert rc == 0, err
        modes = {}
        spool_files = 0
        for dirpath, dirnames, filenames in os.walk(cache):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                modes[p] = stat.S_IMODE(os.lstat(p).st_mode)
            for fn in filenames:
                p = os.path.join(dirpath, fn)
                modes[p] = stat.S_IMODE(os.lstat(p).st_mode)
                if os.sep + "spool" + os.sep in p:
                    spool_files += 1
    finally:
        os.kill(emulator.proc.pid, signal.SIGCONT)
    top = stat.S_IMODE(os.stat(cache).st_mode)
    open_to_others = {p: oct(v) for p, v in modes.items() if v & 0o077}
    spool_modes = {v for p, v in modes.items()
                   if os.sep + "spool" + os.sep in p and os.path.isfile(p)}
    ru.record_figures("cache-modes", None, cache_mode=oct(top),
                      spool_files=spool_files, entries=len(modes))
    assert top == 0o700, "cache_dir mode %s" % oct(top)
    assert spool_files >= len(files), "expected %d pending spool files, found %d: %r" % (
        len(files), spool_files, sorted(modes)[:20])
    assert spool_modes == {0o600}, "spool file modes: %r" % {oct(v) for v in spool_modes}
    assert open_to_others == {}, "cache entries open to group/others: %r" % open_to_others
    m.unmount()


def test_warns_on_readable_credentials(emulator, res_mounts, tmp_path):
    creds = str(tmp_path / "key.json")
    shutil.copy(emulator.credentials, creds)
    os.chmod(creds, 0o600)
    m_ok = res_mounts(emulator, credentials=creds)
    m_ok.unmount()
    private_log = m_ok.log()
    os.chmod(creds, 0o644)
    m = res_mounts(emulator, credentials=creds)
    m.unmount()
    log = m.log()
    warn = [ln for ln in log.splitlines() if creds in ln and re.search(
        r"(?i)others|group|mode|permission|readable", ln)]
    ru.record_figures("credentials-warning", None, warning_lines=len(warn))
    assert warn, "no warning for a credentials file with mode 0644:\n" + m.log_tail()
    assert not [ln for ln in private_log.splitlines() if creds in ln and re.search(
        r"(?i)accessible by|readable by", ln)], "a 0600 file drew the warning too"


def test_no_allow_other_by_default(emulator, res_mounts):  # noqa: F811
    m = res_mounts(emulator)
    info = ru.mount_options(m.mnt)
    assert info is not None
    dev, fstype, opts = info
    # Another user cannot even look at the mount.
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "ls",
                        m.mnt], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ru.record_figures("allow-other", None, fstype=fstype, options=",".join(opts),
                      other_user_rc=p.returncode)
    assert fstype.startswith("fuse"), fstype
    assert "allow_other" not in opts, opts
    assert p.returncode != 0 and b"ermission denied" in p.stderr, (p.returncode, p.stderr)
    m.unmount()
    # Control: when asked for, it is there (so the check above can see it).
    m2 = res_mounts(emulator, extra_opts=["allow_other"])
    assert "allow_other" in ru.mount_options(m2.mnt)[2]
    m2.unmount()


def _listen_addrs(port):
    """Local addresses listening on port, from /proc/net/tcp and tcp6."""
    out = []
    for fn, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, st = parts[1], parts[3]
                    addr, p = local.split(":")
                    if int(p, 16) != port or st != "0A":  # 0A = LISTEN
                        continue
                    if v6:
                        out.append("v6:" + addr)
                    else:
                        b = bytes.fromhex(addr)[::-1]
                        out.append(".".join(str(x) for x in b))
        except OSError:
            pass
    return out


def test_emulator_binds_loopback_by_default(tmp_path):
    data = str(tmp_path / "data")
    proc = subprocess.Popen([ru.os.path.join(ru.build_dir(), "contrib", "emulator",
                                             "dicomfs-emulator"), "--data", data],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        url = None
        deadline = time.monotonic() + 30
        buf = b""
        while time.monotonic() < deadline and url is None:
            r, _, _ = select.select([proc.stdout], [], [], 0.5)
            if r:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith("dicomfs-emulator ready on "):
                        url = line.split(" on ", 1)[1].strip()
        assert url, "emulator did not start: %r" % buf
        port = int(url.rsplit(":", 1)[1])
        addrs = _listen_addrs(port)
        ru.record_figures("emulator-bind", None, url=url, listen=addrs)
        assert url.startswith("http://127.0.0.1:"), url
        assert addrs == ["127.0.0.1"], "emulator listens on %r" % addrs
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
