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


def test_dicomfs_over_tls_needs_ca_file(emulator_factory, tmp_path):  # noqa: F811
    """dicomfs with -o ca_file= imports over https (token grant included);
    without it the credentials check at mount fails on the certificate, and
    a ca_file that does not exist is refused with its name."""
    from dicom_samples import make_instance
    from mount_fixture import DICOMFS, DicomfsMount
    from pydicom.uid import generate_uid

    d = tmp_path / "tls"
    emu = emulator_factory("--tls-dir", str(d))
    ca = str(d / "ca.pem")

    bad = DicomfsMount(emu, str(tmp_path / "nocafile"))
    with pytest.raises(RuntimeError) as e:
        bad.start(timeout=60)
    assert "certificate" in str(e.value).lower(), str(e.value)[-2000:]

    missing = subprocess.run([DICOMFS, "projects/p/locations/l", str(tmp_path),
                              "-o", f"staging=gs://staging/x,ca_file={tmp_path}/nope.pem"],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0
    assert "ca_file" in missing.stderr and "nope.pem" in missing.stderr, missing.stderr

    m = DicomfsMount(emu, str(tmp_path / "m"), options=[f"ca_file={ca}", "commit_delay=0.2"])
    m.start(timeout=60)
    try:
        src = tmp_path / "one.dcm"
        make_instance(str(src), generate_uid(), generate_uid(), generate_uid())
        imp = m.path("ds", "store", "import")
        r = subprocess.run(["cp", str(src), imp], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        w = subprocess.run([DICOMFS, "wait", m.path("ds", "store")], capture_output=True,
                           text=True, timeout=120)
        assert w.returncode == 0, (w.stdout, w.stderr, m.log_text()[-3000:])
        assert "1/1 imported" in w.stdout, w.stdout
    finally:
        m.stop()
