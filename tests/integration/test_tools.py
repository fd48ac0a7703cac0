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
