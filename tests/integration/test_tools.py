"""Issue 15: every tool gets the truth. Real tools (rsync, tar, cp, du, rm,
sed, shells, tail) against real mounts of the emulator."""
import os
import subprocess
import tarfile

import pytest

pytest.importorskip("pydicom")
from test_shell_redirect import filled, sh, walk_files  # noqa: E402,F401

TOOL_TIMEOUT = 120


def run(*argv, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=TOOL_TIMEOUT, **kw)


def files_of(files, prefix=""):
    return {rel: data for rel, data in files.items() if rel.startswith(prefix)}


# ---------------------------------------------------------------- 1. sizes

def test_studies_sizes_before_any_read(dicomfs_mount, filled):
    _, ds_id, st_id, files = filled
    m = dicomfs_mount
    for rel, data in files.items():
        assert os.stat(m.path(ds_id, st_id, "studies", rel)).st_size == len(data), rel


def test_rsync_tar_cp_du_of_studies_are_byte_identical(dicomfs_mount, filled, tmp_path):
    _, ds_id, st_id, files = filled
    m = dicomfs_mount
    studies = m.path(ds_id, st_id, "studies")
    # du first: sizes must be right before anything was read
    r = run("du", "-sb", studies)
    assert r.returncode == 0, r.stderr
    total = int(r.stdout.split()[0])
    assert total == sum(len(d) for d in files.values())  # directories count 0
    r = run("rsync", "-a", studies + "/", str(tmp_path / "rsync"))
    assert r.returncode == 0, r.stderr
    r = run("tar", "-cf", str(tmp_path / "s.tar"), "-C", studies, ".")
    assert r.returncode == 0, r.stderr
    r = run("cp", "-r", studies, str(tmp_path / "cp"))
    assert r.returncode == 0, r.stderr
    with tarfile.open(tmp_path / "s.tar") as t:
        t.extractall(tmp_path / "tar")
    for name in ("rsync", "tar", "cp"):
        got = walk_files(str(tmp_path / name))
        assert sorted(got) == sorted(files), name
        for rel, p in got.items():
            with open(p, "rb") as f:
                assert f.read() == files[rel], (name, rel)


# ---------------------------------------------------------------- 2. deletes

def test_rm_in_studies_without_allow_delete_is_refused(dicomfs_mount, filled):
    _, ds_id, st_id, files = filled
    m = dicomfs_mount
    rel = sorted(files)[0]
    inst = m.path(ds_id, st_id, "studies", rel)
    r = run("rm", "-f", inst)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr, r.stderr
    study = m.path(ds_id, st_id, "studies", rel.split("/")[0])
    r = run("rm", "-rf", study)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr, r.stderr
    assert os.path.exists(inst)
    assert len(walk_files(m.path(ds_id, st_id, "studies"))) == len(files)
    assert "mount with -o allow_delete" in m.log_text()


def test_rm_in_studies_with_allow_delete_deletes(mount_factory, emulator, filled):
    from test_shell_redirect import store_sops
    ds, ds_id, st_id, files = filled
    m = mount_factory(options=["allow_delete"])
    studies = m.path(ds_id, st_id, "studies")
    rels = sorted(files)
    one = rels[0]
    r = run("rm", os.path.join(studies, one))
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(os.path.join(studies, one))
    store = f"{ds}/dicomStores/{st_id}"
    sop = one.rsplit("/", 1)[1][:-4]
    assert sop not in store_sops(emulator, store)
    other_study = rels[-1].split("/")[0]
    r = run("rm", "-r", os.path.join(studies, other_study))
    assert r.returncode == 0, r.stderr
    assert other_study not in os.listdir(studies)
    left = sorted(walk_files(studies))
    assert left == [rel for rel in rels[1:] if not rel.startswith(other_study + "/")]
    assert len(store_sops(emulator, store)) == len(left)
