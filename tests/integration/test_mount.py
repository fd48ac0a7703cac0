"""The dicomfs daemon: mounting, the tree, mkdir, refused writes, checks
before mounting, --help/--version. Real mounts of the emulator."""
import errno
import json
import os
import stat
import subprocess
import tempfile
import uuid

import pytest

from mount_fixture import (DICOMFS, LOCATION_NAME, STAGING, emulator_endpoints, run_dicomfs)


def uid(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ds_store(hc_api):
    ds_id, st_id = uid("ds"), uid("st")
    ds = hc_api.create_dataset(ds_id)
    hc_api.create_store(ds, st_id)
    return ds_id, st_id


def expect_errno(e, fn, *args):
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno in (e if isinstance(e, tuple) else (e,)), ei.value


def test_ls_root_dataset_store(dicomfs_mount, hc_api, ds_store):
    ds_id, st_id = ds_store
    m = dicomfs_mount
    root = os.listdir(m.mnt)
    assert ds_id in root
    api_ids = {n.rsplit("/", 1)[1] for n in hc_api.list_datasets()}
    assert set(root) == api_ids
    assert sorted(os.listdir(m.path(ds_id))) == sorted(["operations", st_id])
    assert sorted(os.listdir(m.path(ds_id, st_id))) == ["export", "import", "operations",
                                                         "status", "status.json", "studies"]
    assert sorted(os.listdir(m.path(ds_id, st_id, "export"))) == sorted(
        ["dicom", "dicom-explicit-le", "raw", "png", "jpeg"])


def test_stat(dicomfs_mount, ds_store):
    ds_id, st_id = ds_store
    m = dicomfs_mount
    st = os.stat(m.path(ds_id))
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_uid == os.getuid()
    st = os.stat(m.path(ds_id, st_id, "status"))
    assert stat.S_ISREG(st.st_mode)
    assert st.st_mode & 0o222 == 0
    assert stat.S_ISDIR(os.stat(m.path(ds_id, "operations")).st_mode)
    expect_errno(errno.ENOENT, os.stat, m.path("no-such-dataset"))
    expect_errno(errno.ENOENT, os.stat, m.path(ds_id, "no-such-store"))
    expect_errno(errno.ENOENT, os.stat, m.path(ds_id, st_id, "nothing"))
    expect_errno(errno.ENAMETOOLONG, os.stat, m.path("x" * 256))


def test_mount_of_a_dataset(mount_factory, hc_api, ds_store):
    ds_id, st_id = ds_store
    m = mount_factory(source=f"{LOCATION_NAME}/datasets/{ds_id}")
    assert sorted(os.listdir(m.mnt)) == sorted(["operations", st_id])
    assert "import" in os.listdir(m.path(st_id))
    os.mkdir(m.path("newstore"))
    assert (f"{LOCATION_NAME}/datasets/{ds_id}/dicomStores/newstore"
            in hc_api.list_stores(f"{LOCATION_NAME}/datasets/{ds_id}"))
    assert sorted(os.listdir(m.mnt)) == sorted(["operations", st_id, "newstore"])
    expect_errno(errno.EPERM, os.rmdir, m.path("newstore"))
    expect_errno((errno.EPERM, errno.EACCES), write_file, m.path("file-at-root"))


def test_mkdir_dataset_and_store(dicomfs_mount, hc_api):
    m = dicomfs_mount
    ds_id, st_id = uid("mkds"), uid("mkst")
    os.mkdir(m.path(ds_id))
    assert f"{LOCATION_NAME}/datasets/{ds_id}" in hc_api.list_datasets()
    assert ds_id in os.listdir(m.mnt)
    os.mkdir(m.path(ds_id, st_id))
    assert (f"{LOCATION_NAME}/datasets/{ds_id}/dicomStores/{st_id}"
            in hc_api.list_stores(f"{LOCATION_NAME}/datasets/{ds_id}"))
    assert st_id in os.listdir(m.path(ds_id))
    expect_errno(errno.EEXIST, os.mkdir, m.path(ds_id))
    expect_errno(errno.EEXIST, os.mkdir, m.path(ds_id, st_id))
    expect_errno(errno.EINVAL, os.mkdir, m.path("bad name!"))
    expect_errno(errno.ENAMETOOLONG, os.mkdir, m.path("d" * 256))


def test_removal_needs_allow_delete(dicomfs_mount, hc_api, ds_store):
    ds_id, st_id = ds_store
    m = dicomfs_mount
    expect_errno(errno.EPERM, os.rmdir, m.path(ds_id, st_id))
    expect_errno(errno.EPERM, os.rmdir, m.path(ds_id))
    assert f"{LOCATION_NAME}/datasets/{ds_id}/dicomStores/{st_id}" in hc_api.list_stores(
        f"{LOCATION_NAME}/datasets/{ds_id}")
    assert "removing datasets and stores needs -o allow_delete" in m.log_text()


def test_allow_delete(mount_factory, hc_api, ds_store):
    ds_id, st_id = ds_store
    m = mount_factory(options=["allow_delete"])
    expect_errno(errno.ENOTEMPTY, os.rmdir, m.path(ds_id))
    os.rmdir(m.path(ds_id, st_id))
    assert hc_api.list_stores(f"{LOCATION_NAME}/datasets/{ds_id}") == []
    os.rmdir(m.path(ds_id))
    assert f"{LOCATION_NAME}/datasets/{ds_id}" not in hc_api.list_datasets()


def write_file(path, data=b"x"):
    with open(path, "wb") as f:
        f.write(data)


def test_refused_writes(dicomfs_mount, ds_store):
    ds_id, st_id = ds_store
    m = dicomfs_mount
    perm = (errno.EPERM, errno.EACCES, errno.EROFS)
    expect_errno(perm, write_file, m.path("file-in-root"))
    expect_errno(perm, write_file, m.path(ds_id, "file-in-dataset"))
    expect_errno(perm, write_file, m.path(ds_id, "operations", "x.json"))
    expect_errno(perm, write_file, m.path(ds_id, st_id, "operations", "x.json"))
    expect_errno(perm, write_file, m.path(ds_id, st_id, "status"))
    # (export/x itself is a filter exporting DICOM as stored: test_tools.py)
    expect_errno(perm + (errno.ENOENT,), write_file, m.path(ds_id, st_id, "export", "x.out", "y"))
    expect_errno(perm, os.mkdir, m.path(ds_id, "operations", "d"))
    expect_errno(perm + (errno.EISDIR,), os.unlink, m.path(ds_id, st_id, "status"))
    assert not os.path.exists(m.path("file-in-root"))
    log = m.log_text()
    assert "file-in-root" in log
    assert "status is read-only" in log


def test_status_file_reads(dicomfs_mount, ds_store):
    ds_id, st_id = ds_store
    m = dicomfs_mount
    with open(m.path(ds_id, st_id, "status")) as f:
        text = f.read()
    assert os.stat(m.path(ds_id, st_id, "status")).st_size == len(text.encode())


def test_remount_keeps_cache(dicomfs_mount, ds_store):
    ds_id, _ = ds_store
    m = dicomfs_mount
    cache = m.cache_dir
    m.remount()
    assert m.cache_dir == cache
    assert ds_id in os.listdir(m.mnt)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


# ---- checks before mounting: non-zero exit, clear message, nothing mounted


def attempt(emulator, tmp, source=LOCATION_NAME, staging=STAGING, endpoint=None,
            storage_endpoint=None, credentials=None, extra=()):
    hc, st, creds = emulator_endpoints(emulator)
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt, exist_ok=True)
    opts = [f"staging={staging}", f"cache_dir={tmp}/cache", f"endpoint={endpoint or hc}",
            f"storage_endpoint={storage_endpoint or st}"]
    c = credentials if credentials is not None else creds
    opts.append(f"credentials={c}" if c else "no_auth")
    opts += list(extra)
    rc, out, err = run_dicomfs([source, mnt, "-f", "-o", ",".join(opts)], timeout=60)
    assert not os.path.ismount(mnt)
    assert "Sanitizer" not in err and "runtime error:" not in err, err
    return rc, err


def test_bad_source(emulator, tmp_path):
    rc, err = attempt(emulator, str(tmp_path), source="projects/p/zones/z")
    assert rc not in (0, None)
    assert "SOURCE" in err and "projects/PROJECT/locations/LOCATION" in err


def test_missing_dataset(emulator, tmp_path):
    rc, err = attempt(emulator, str(tmp_path), source=f"{LOCATION_NAME}/datasets/nope404")
    assert rc not in (0, None)
    assert "does not exist" in err


def test_unreachable_endpoint(emulator, tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc, err = attempt(emulator, str(tmp_path), endpoint=f"http://127.0.0.1:{port}/")
    assert rc not in (0, None)
    assert "cannot reach the Healthcare API" in err


def test_rejected_credentials(emulator, tmp_path):
    _, _, creds = emulator_endpoints(emulator)
    if not creds:
        pytest.fail("the emulator fixture provides no credentials file")
    with open(creds) as f:
        key = json.load(f)
    # Same account, another private key: the token endpoint refuses the signature.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key["private_key"] = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    bad = tmp_path / "bad-key.json"
    bad.write_text(json.dumps(key))
    os.chmod(bad, 0o600)
    rc, err = attempt(emulator, str(tmp_path), credentials=str(bad))
    assert rc not in (0, None)
    assert "credentials rejected" in err


def test_missing_credentials_file(emulator, tmp_path):
    rc, err = attempt(emulator, str(tmp_path), credentials=str(tmp_path / "missing.json"))
    assert rc not in (0, None)
    assert "credentials" in err


def test_missing_staging_bucket(emulator, tmp_path):
    rc, err = attempt(emulator, str(tmp_path), staging="gs://no-such-bucket-xyz/p")
    assert rc not in (0, None)
    assert "staging bucket gs://no-such-bucket-xyz does not exist" in err


def test_missing_staging_option(tmp_path):
    rc, out, err = run_dicomfs([LOCATION_NAME, str(tmp_path)], timeout=20)
    assert rc not in (0, None)
    assert "staging" in err


def test_help_and_version():
    p = subprocess.run([DICOMFS, "--help"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0
    assert "staging=gs://" in p.stdout and "allow_delete" in p.stdout
    p = subprocess.run([DICOMFS, "--version"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0
    assert p.stdout.startswith("dicomfs ")


def _pids_with_arg(arg):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if arg.encode() in argv and state != "Z":
            pids.append(int(d))
    return pids


def test_fstab_style_mount_daemonizes(emulator, tmp_path):
    """mount.fuse3 runs `dicomfs SOURCE MOUNTPOINT -o rw,...,_netdev`: dicomfs
    checks, mounts, daemonizes; fusermount3 -u ends the daemon."""
    import time
    hc, st, creds = emulator_endpoints(emulator)
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    opts = (f"rw,staging=gs://staging/p,_netdev,endpoint={hc},storage_endpoint={st},"
            f"credentials={creds},cache_dir={tmp_path}/cache")
    env = dict(os.environ, PATH=os.path.dirname(DICOMFS) + ":" + os.environ.get("PATH", ""))
    p = subprocess.run(["/usr/sbin/mount.fuse3", f"{LOCATION_NAME}/datasets/ds", mnt, "-t",
                        "dicomfs", "-o", opts], env=env, capture_output=True, text=True,
                       timeout=60)
    try:
        assert p.returncode == 0, p.stderr
        assert os.path.ismount(mnt)
        assert sorted(os.listdir(mnt)) == ["operations", "store"]
        with open("/proc/mounts") as f:
            line = [l for l in f if f" {mnt} " in l][0]
        assert line.startswith(f"{LOCATION_NAME}/datasets/ds {mnt} fuse.dicomfs ")
        assert "default_permissions" in line and "allow_other" not in line
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt])
        deadline = time.time() + 20
        while _pids_with_arg(mnt) and time.time() < deadline:
            time.sleep(0.1)
        left = _pids_with_arg(mnt)
        for pid in left:
            os.kill(pid, 9)
    assert not left, "the daemon did not exit after unmount"


def test_fstab_style_error_reaches_terminal(emulator, tmp_path):
    hc, st, creds = emulator_endpoints(emulator)
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    opts = (f"rw,staging=gs://no-such-bucket-q/p,_netdev,endpoint={hc},storage_endpoint={st},"
            f"credentials={creds},cache_dir={tmp_path}/cache")
    env = dict(os.environ, PATH=os.path.dirname(DICOMFS) + ":" + os.environ.get("PATH", ""))
    p = subprocess.run(["/usr/sbin/mount.fuse3", f"{LOCATION_NAME}/datasets/ds", mnt, "-t",
                        "dicomfs", "-o", opts], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert "gs://no-such-bucket-q does not exist" in p.stderr
    assert not os.path.ismount(mnt)


def test_ls_l_of_many_stores_costs_one_listing(dicomfs_mount, hc_api, emulator):
    ds_id = uid("many")
    ds = hc_api.create_dataset(ds_id)
    for i in range(120):
        hc_api.create_store(ds, f"s{i:03d}")
    m = dicomfs_mount
    os.stat(m.path(ds_id))
    before = emulator.stats()["byKind"]["healthcare"]
    names = os.listdir(m.path(ds_id))
    for n in names:
        assert stat.S_ISDIR(os.stat(m.path(ds_id, n)).st_mode)
    after = emulator.stats()["byKind"]["healthcare"]
    assert len(names) == 121  # the stores and operations/
    assert after - before <= 4, (before, after)


def test_studies_view(dicomfs_mount, hc_api, tmp_path):
    """STORE/studies/STUDY/SERIES/INSTANCE.dcm reads the instance as stored."""
    from test_export import make_instance
    from pydicom.uid import generate_uid
    ds_id, st_id = uid("sv"), uid("st")
    ds = hc_api.create_dataset(ds_id)
    store = hc_api.create_store(ds, st_id)
    study, series, inst = generate_uid(), generate_uid(), generate_uid()
    p = tmp_path / "i.dcm"
    make_instance(str(p), study, series, inst)
    data = p.read_bytes()
    src = uid("sv")
    hc_api.upload("staging", f"{src}/i.dcm", data, "application/dicom")
    op = hc_api.wait_operation(hc_api.import_gcs(store, f"gs://staging/{src}/**"))
    assert "error" not in op, op
    m = dicomfs_mount
    base = m.path(ds_id, st_id, "studies")
    assert os.listdir(base) == [study]
    assert os.listdir(os.path.join(base, study)) == [series]
    assert os.listdir(os.path.join(base, study, series)) == [inst + ".dcm"]
    with open(os.path.join(base, study, series, inst + ".dcm"), "rb") as f:
        assert f.read() == data
    assert os.stat(os.path.join(base, study, series, inst + ".dcm")).st_size == len(data)
    with pytest.raises(OSError) as ei:
        open(os.path.join(base, study, series, inst + ".dcm"), "wb").close()
    assert ei.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
