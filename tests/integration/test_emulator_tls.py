"""--tls-dir: the emulator serves https with a certificate from a CA made at
start; clients that are given DIR/ca.pem connect, clients that are not refuse."""
import os
import subprocess

import pytest

from emulator_fixture import emulator_factory  # noqa: F401  (fixture)


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def tls_emu(emulator_factory, tmp_path):  # noqa: F811
    d = tmp_path / "tls"
    emu = emulator_factory("--tls-dir", str(d), "--no-auth")
    return emu, str(d / "ca.pem")


def test_https_with_ca_works_without_fails(tls_emu):
    emu, ca = tls_emu
    assert emu.url.startswith("https://127.0.0.1:")
    assert os.path.isfile(ca)
    # The export line names https endpoints and the CA; no plain-http metadata host.
    assert emu.env["STORAGE_EMULATOR_HOST"] == emu.url
    assert emu.env["CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE"] == emu.url + "/"
    assert emu.env["CURL_CA_BUNDLE"] == ca and emu.env["SSL_CERT_FILE"] == ca
    assert "GCE_METADATA_HOST" not in emu.env

    ok = curl("--cacert", ca, emu.url + "/storage/v1/b/staging")
    assert ok.returncode == 0, ok.stderr
    assert '"name":"staging"' in ok.stdout.replace(" ", "")
    # The certificate names localhost too.
    port = emu.url.rsplit(":", 1)[1]
    ok2 = curl("--cacert", ca, f"https://localhost:{port}/storage/v1/b/staging")
    assert ok2.returncode == 0, ok2.stderr

    # Without the CA, verification fails (curl exit 60: peer certificate).
    bad = curl(emu.url + "/storage/v1/b/staging")
    assert bad.returncode == 60, (bad.returncode, bad.stderr)
    # Plain http on the https port gets no API answer.
    plain = curl("http://127.0.0.1:%s/storage/v1/b/staging" % port)
    assert '"staging"' not in plain.stdout


def test_upload_over_tls(tls_emu, tmp_path):
    emu, ca = tls_emu
    src = tmp_path / "obj.bin"
    src.write_bytes(os.urandom(3 << 20))
    up = curl("--cacert", ca, "--fail", "-X", "POST", "-T", str(src), "-o", "/dev/null",
              emu.url + "/upload/storage/v1/b/staging/o?uploadType=media&name=t%2Fobj.bin")
    assert up.returncode == 0, up.stderr
    got = tmp_path / "back.bin"
    down = curl("--cacert", ca, "--fail", "-o", str(got),
                emu.url + "/storage/v1/b/staging/o/t%2Fobj.bin?alt=media")
    assert down.returncode == 0, down.stderr
    assert got.read_bytes() == src.read_bytes()


def test_tls_dir_unwritable_is_refused(tmp_path):
    from emulator_fixture import emulator_binary
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run([emulator_binary(), "--tls-dir", str(blocker / "sub"), "--no-auth"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "--tls-dir" in r.stderr
