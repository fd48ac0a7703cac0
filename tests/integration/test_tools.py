"""Issue 15: every tool gets the truth. Real tools (rsync, tar, cp, du, rm,
sed, shells, tail) against real mounts of the emulator."""
import errno
import os
import subprocess
import tarfile
import time

import pytest

pytest.importorskip("pydicom")
from test_shell_redirect import (filled, op_counts, sh, wait_one_more_op_done,  # noqa: E402,F401
                                 walk_files)

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
    # a study directory's mtime is its StudyDate/StudyTime (dicom_samples: 20240102 101010)
    import calendar
    study = sorted(files)[0].split("/")[0]
    assert os.stat(m.path(ds_id, st_id, "studies", study)).st_mtime == \
        calendar.timegm((2024, 1, 2, 10, 10, 10))


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


# ---------------------------------------------------------------- 3. export runs

def copy_matches(src, files, tmp_path, label):
    """du -sb, rsync -a, tar and cp -r of a result folder give exactly files
    (rel -> bytes)."""
    r = run("du", "-sb", src)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[0]) == sum(len(d) for d in files.values())
    r = run("rsync", "-a", src + "/", str(tmp_path / (label + "-rsync")))
    assert r.returncode == 0, r.stderr
    r = run("tar", "-cf", str(tmp_path / (label + ".tar")), "-C", src, ".")
    assert r.returncode == 0, r.stderr
    with tarfile.open(tmp_path / (label + ".tar")) as t:
        t.extractall(tmp_path / (label + "-tar"))
    r = run("cp", "-r", src, str(tmp_path / (label + "-cp")))
    assert r.returncode == 0, r.stderr
    for d in (label + "-rsync", label + "-tar", label + "-cp"):
        got = walk_files(str(tmp_path / d))
        assert sorted(got) == sorted(files), d
        for rel, p in got.items():
            with open(p, "rb") as f:
                assert f.read() == files[rel], (d, rel)


def test_two_exports_under_one_name_keep_their_runs_apart(dicomfs_mount, hc_api, filled,
                                                          tmp_path):
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    studies = sorted({rel.split("/")[0] for rel in files})
    assert len(studies) == 2
    fmt = m.path(ds_id, st_id, "export", "dicom")
    name = os.path.join(fmt, "pick")
    for i, study in enumerate(studies):
        before = op_counts(m, hc_api, ds, ds_id, st_id)
        r = sh('echo "/studies/$1" > "$2"', study, name)
        assert r.returncode == 0, r.stderr
        wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before)
        # NAME.out/ shows the latest started run only
        copy_matches(name + ".out", files_of(files, study + "/"), tmp_path, f"out{i}")
    runs = sorted(os.listdir(name + ".runs"))
    assert len(runs) == 2
    # a run's directory mtime is its start time (its name); NAME.out's the latest
    import calendar
    for run_id in runs:
        t = calendar.timegm(time.strptime(run_id[:15], "%Y%m%dT%H%M%S")) + int(run_id[16:19]) / 1e3
        assert abs(os.stat(os.path.join(name + ".runs", run_id)).st_mtime - t) < 0.002
    assert os.stat(name + ".out").st_mtime == os.stat(os.path.join(name + ".runs", runs[-1])).st_mtime
    for run_id, study in zip(runs, studies):
        copy_matches(os.path.join(name + ".runs", run_id), files_of(files, study + "/"),
                     tmp_path, "run-" + run_id)
    assert sorted(os.listdir(fmt)) == ["pick", "pick.out", "pick.runs"]


def test_filter_straight_in_export_exports_dicom_as_stored(dicomfs_mount, hc_api, filled,
                                                           tmp_path):
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    study = sorted(files)[0].split("/")[0]
    exp = m.path(ds_id, st_id, "export")
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    r = sh('echo "/studies/$1" > "$2"', study, os.path.join(exp, "mine"))
    assert r.returncode == 0, r.stderr
    wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before)
    listing = os.listdir(exp)
    assert {"dicom", "png", "mine", "mine.out", "mine.runs"} <= set(listing), listing
    copy_matches(os.path.join(exp, "mine.out"), files_of(files, study + "/"), tmp_path, "top")


# ---------------------------------------------------------------- 4. editors

def vim_write_pattern(path, old, new):
    """vim's `:w` with writebackup and backupcopy=no, syscall for syscall
    (vim -es -u NONE writes in place instead, so this emulates the rename
    path): swap file, directory probe 4913, the original renamed to NAME~,
    NAME created anew and written, its mode set, NAME~ and the swap removed."""
    d, base = os.path.split(path)
    swap = os.path.join(d, "." + base + ".swp")
    with open(path) as f:
        text = f.read().replace(old, new)
    sfd = os.open(swap, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.write(sfd, b"b0VIM 9.0")
    probe = os.path.join(d, "4913")
    pfd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.fchown(pfd, os.getuid(), os.getgid())
    os.close(pfd)
    os.unlink(probe)
    os.rename(path, path + "~")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, text.encode())
    os.fsync(fd)
    os.close(fd)
    os.chmod(path, 0o644)
    os.unlink(path + "~")
    os.close(sfd)
    os.unlink(swap)
    return subprocess.CompletedProcess([], 0, "", "")


def edit_with(tool, path, old, new):
    if tool == "sed -i":
        return run("sed", "-i", f"s/{old}/{new}/", path)
    if tool == "vim pattern":
        return vim_write_pattern(path, old, new)
    bc = tool.split("=", 1)[1]  # vim backupcopy=no|yes
    return run("vim", "-u", "NONE", "-es", "-c", f"set backupcopy={bc}", "-c",
               f"%s/{old}/{new}/", "-c", "wq", path, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("tool", ["sed -i", "vim backupcopy=no", "vim backupcopy=yes",
                                  "vim pattern", "cp"])
def test_editors_save_a_filter_with_exactly_one_export(dicomfs_mount, hc_api, filled, tmp_path,
                                                       tool):
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    old, new = sorted({rel.split("/")[0] for rel in files})
    fmt = m.path(ds_id, st_id, "export", "dicom")
    name = os.path.join(fmt, "edit")
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    r = sh('echo "/studies/$1" > "$2"', old, name)
    assert r.returncode == 0, r.stderr
    wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before)
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    if tool == "cp":
        src = tmp_path / "new-filter"
        src.write_text(f"/studies/{new}\n")
        r = run("cp", str(src), name)
    else:
        r = edit_with(tool, name, old, new)
    assert r.returncode == 0, (r.stdout, r.stderr, m.log_text()[-2000:])
    wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before)  # exactly one more
    with open(name) as f:
        assert f.read() == f"/studies/{new}\n"
    assert sorted(os.listdir(fmt)) == ["edit", "edit.out", "edit.runs"]  # no scratch left
    copy_matches(name + ".out", files_of(files, new + "/"), tmp_path, "edited")


def test_scratch_files_start_nothing(dicomfs_mount, hc_api, filled):
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    fmt = m.path(ds_id, st_id, "export", "dicom")
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    for n in (".edit.swp", "edit~", "#edit#", "sedAb12Cd", "4913", ".x.AbCdEf"):
        p = os.path.join(fmt, n)
        with open(p, "w") as f:
            f.write("scratch\n")
        with open(p) as f:
            assert f.read() == "scratch\n"
        os.chmod(p, 0o600)
        os.utime(p, None)
    assert sorted(os.listdir(fmt)) == sorted(
        [".edit.swp", "edit~", "#edit#", "sedAb12Cd", "4913", ".x.AbCdEf"])
    for n in os.listdir(fmt):
        os.unlink(os.path.join(fmt, n))
    assert os.listdir(fmt) == []
    time.sleep(1)
    assert op_counts(m, hc_api, ds, ds_id, st_id) == before


def test_bad_filter_renamed_over_a_filter_is_refused(dicomfs_mount, hc_api, filled):
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    fmt = m.path(ds_id, st_id, "export", "dicom")
    tmp = os.path.join(fmt, ".new.tmp")
    with open(tmp, "w") as f:
        f.write("/not-a-study\n")
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    with pytest.raises(OSError) as ei:
        os.rename(tmp, os.path.join(fmt, "new"))
    assert ei.value.errno == errno.EINVAL
    assert sorted(os.listdir(fmt)) == [".new.tmp"]
    time.sleep(1)
    assert op_counts(m, hc_api, ds, ds_id, st_id) == before


# ---------------------------------------------------------------- 5. refusals stay visible

def status_of(m, ds_id, st_id):
    with open(m.path(ds_id, st_id, "status")) as f:
        return f.read()


def dicomfs_wait(m, ds_id, st_id):
    from mount_fixture import DICOMFS
    return subprocess.run([DICOMFS, "wait", m.path(ds_id, st_id), "--timeout", "60"],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_echo_into_import_leaves_a_visible_refusal(dicomfs_mount, filled, tmp_path, shell):
    from test_shell_redirect import wait_until
    _, ds_id, st_id, _ = filled
    m = dicomfs_mount
    imp = m.path(ds_id, st_id, "import")
    x = os.path.join(imp, "x.dcm")
    r = run(shell, "-c", 'echo hello > "$1"', shell, x)
    assert r.returncode == 0  # the shell ignores close()'s EINVAL
    line = "rejected: import/x.dcm: not a DICOM Part-10 file"
    wait_until(lambda: line in status_of(m, ds_id, st_id), what="rejected line")
    assert os.listdir(imp) == ["x.dcm"]
    assert os.stat(x).st_size == 0
    w = dicomfs_wait(m, ds_id, st_id)
    assert w.returncode == 1, (w.stdout, w.stderr)
    assert line in w.stdout
    # re-creating the same name right away works: a real DICOM file now
    src = tmp_path / "ok.dcm"
    from dicom_samples import make_instance
    from pydicom.uid import generate_uid
    make_instance(str(src), generate_uid(), generate_uid(), generate_uid())
    r = run("cp", str(src), x)
    assert r.returncode == 0, r.stderr
    assert "rejected:" not in status_of(m, ds_id, st_id)
    w = dicomfs_wait(m, ds_id, st_id)
    assert w.returncode == 0, (w.stdout, w.stderr)
    # a second refusal, cleared by removing the entry
    r = run(shell, "-c", 'echo again > "$1"', shell, os.path.join(imp, "y.dcm"))
    wait_until(lambda: "rejected: import/y.dcm" in status_of(m, ds_id, st_id), what="y")
    r = run("rm", os.path.join(imp, "y.dcm"))
    assert r.returncode == 0, r.stderr
    assert "rejected:" not in status_of(m, ds_id, st_id)
    assert "y.dcm" not in os.listdir(imp)


def test_bad_filter_by_echo_leaves_error_and_status_line(dicomfs_mount, hc_api, filled):
    from test_shell_redirect import wait_until
    ds, ds_id, st_id, files = filled
    m = dicomfs_mount
    fmt = m.path(ds_id, st_id, "export", "dicom")
    before = op_counts(m, hc_api, ds, ds_id, st_id)
    bad = os.path.join(fmt, "bad")
    r = run("bash", "-c", 'echo studies/bad > "$1"', "bash", bad)
    assert r.returncode == 0
    wait_until(lambda: os.path.exists(os.path.join(bad + ".out", "ERROR")), what="ERROR")
    with open(os.path.join(bad + ".out", "ERROR")) as f:
        err = f.read()
    assert "filter: export/dicom/bad" in err and "refused" in err, err
    assert "rejected: export/dicom/bad: line 1, column 1" in status_of(m, ds_id, st_id)
    w = dicomfs_wait(m, ds_id, st_id)
    assert w.returncode == 1 and "rejected: export/dicom/bad" in w.stdout, w.stdout
    # re-creating the name right away with a good filter starts it
    study = sorted(files)[0].split("/")[0]
    r = run("bash", "-c", 'echo "/studies/$1" > "$2"', "bash", study, bad)
    assert r.returncode == 0
    wait_one_more_op_done(m, hc_api, ds, ds_id, st_id, before)
    assert "rejected:" not in status_of(m, ds_id, st_id)
    assert not os.path.exists(os.path.join(bad + ".out", "ERROR"))
    # a refused one removed: cleared
    r = run("bash", "-c", 'echo nope > "$1"', "bash", os.path.join(fmt, "gone"))
    wait_until(lambda: "rejected: export/dicom/gone" in status_of(m, ds_id, st_id), what="gone")
    os.unlink(os.path.join(fmt, "gone"))
    assert "rejected:" not in status_of(m, ds_id, st_id)
    assert "gone" not in os.listdir(fmt)


# ---------------------------------------------------------------- 6. smaller points

@pytest.mark.parametrize("flags", ["-aX", "-aAX"])
def test_rsync_aX_into_import_keeps_user_xattrs(dicomfs_mount, filled, tmp_path, flags):
    from dicom_samples import make_tree
    _, ds_id, st_id, _ = filled
    m = dicomfs_mount
    src = tmp_path / "xattr-src"
    made = make_tree(str(src), n_studies=1, n_instances=2)
    for *_, path in made:
        os.setxattr(path, "user.origin", b"scanner-7")
    imp = m.path(ds_id, st_id, "import")
    r = run("rsync", flags, str(src) + "/", imp + "/")
    assert r.returncode == 0, r.stderr
    got = walk_files(imp)
    assert len(got) == 2
    for p in got.values():
        assert os.getxattr(p, "user.origin") == b"scanner-7"
    one = sorted(got.values())[0]
    with pytest.raises(OSError) as ei:
        os.setxattr(one, "user.dicomfs.state", b"imported")
    assert ei.value.errno == errno.EPERM
    # other namespaces are not supported, for reading too (README: ls -l then
    # stops asking for SELinux labels and ACLs after the first entry)
    for name in ("security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as ei:
            os.getxattr(one, name)
        assert ei.value.errno == errno.ENOTSUP, (name, ei.value)
    w = dicomfs_wait(m, ds_id, st_id)
    assert w.returncode == 0, (w.stdout, w.stderr)


def test_log_lines_escape_names(dicomfs_mount, filled):
    from test_shell_redirect import wait_until
    _, ds_id, st_id, _ = filled
    m = dicomfs_mount
    name = "evil\ndicomfs: error: forged.dcm"
    r = run("bash", "-c", 'echo x > "$1"', "bash", m.path(ds_id, st_id, "import", name))
    assert r.returncode == 0
    wait_until(lambda: "rejected: import/evil\\ndicomfs" in status_of(m, ds_id, st_id),
               what="rejected")
    log = m.log_text()
    assert "evil\\ndicomfs: error: forged.dcm" in log
    assert not any(line.startswith("dicomfs: error: forged.dcm") for line in log.splitlines())


# ---------------------------------------------------------------- 7. man page, install

def test_meson_install_installs_man_page_unit_and_fstab_example(tmp_path):
    from resilience_util import build_dir
    dest = tmp_path / "dest"
    r = run("meson", "install", "-C", build_dir(), "--no-rebuild", "--destdir", str(dest))
    assert r.returncode == 0, r.stdout + r.stderr
    found = {p.name: p for p in dest.rglob("*") if p.is_file()}
    for want in ("dicomfs", "dicomfs.1", "dicomfs@.service", "dicomfs.fstab.example"):
        assert want in found, sorted(found)
    assert found["dicomfs.1"].parent.name == "man1"
    assert found["dicomfs@.service"].parent.as_posix().endswith("systemd/system")
    r = run("man", "-l", str(found["dicomfs.1"]), env=dict(os.environ, MANWIDTH="80",
                                                           MANPAGER="cat", PAGER="cat"))
    assert r.returncode == 0, r.stderr
    for section in ("SYNOPSIS", "OPTIONS", "THE TREE", "GUARANTEES", "DICOMFS WAIT",
                    "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert section in r.stdout, section


def test_tail_f_status_shows_changes_and_status_json(dicomfs_mount, filled):
    import json
    import threading
    _, ds_id, st_id, _ = filled
    m = dicomfs_mount
    status = m.path(ds_id, st_id, "status")
    tail = subprocess.Popen(["tail", "-f", status], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(tail.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.time() + 10
        while not any(l.startswith("imported: ") for l in seen) and time.time() < deadline:
            time.sleep(0.1)
        assert any(l.startswith("imported: ") for l in seen), seen
        r = run("bash", "-c", 'echo x > "$1"', "bash", m.path(ds_id, st_id, "import", "t.dcm"))
        assert r.returncode == 0
        deadline = time.time() + 15
        while not any("rejected: import/t.dcm" in l for l in seen) and time.time() < deadline:
            time.sleep(0.1)
        assert any("rejected: import/t.dcm" in l for l in seen), seen
    finally:
        tail.kill()
        tail.wait(timeout=10)
    # cat gets one consistent text whose length stat reported
    with open(status) as f:
        text = f.read()
    assert text.count("imported: ") == 1
    with open(m.path(ds_id, st_id, "status.json")) as f:
        doc = json.load(f)
    assert doc["imported"] >= 0 and "spooled" in doc
    assert {"path": "import/t.dcm", "reason": doc["rejected"][0]["reason"]} in doc["rejected"]
    assert doc["rejected"][0]["reason"].startswith("not a DICOM Part-10 file")
    assert "status.json" in os.listdir(m.path(ds_id, st_id))


# ---------------------------------------------------------------- 7. big series

def test_series_of_more_than_15000_instances_is_listed_whole(dicomfs_mount, hc_api, emulator,
                                                             tmp_path):
    """DICOMFuse stopped at 15 000; the listing pages through QIDO-RS
    (limit/offset) to the end. One STOW-RS request stores the series."""
    import io
    import uuid
    from dicom_samples import make_instance
    ds_id, st_id = f"bd{uuid.uuid4().hex[:8]}", f"bs{uuid.uuid4().hex[:8]}"
    store = hc_api.create_store(hc_api.create_dataset(ds_id), st_id)
    n = 15_001
    study, series, first = "2.25.7", "2.25.8", "2.25.9100000"
    make_instance(str(tmp_path / "t.dcm"), study, series, first, rows=2, cols=2)
    template = (tmp_path / "t.dcm").read_bytes()
    assert template.count(first.encode()) == 2  # file meta and data set
    sops = [f"2.25.9{100000 + i}" for i in range(n)]  # same length: lengths stay right
    body = io.BytesIO()
    for sop in sops:
        body.write(b"--b0\r\nContent-Type: application/dicom\r\n\r\n")
        body.write(template.replace(first.encode(), sop.encode()))
        body.write(b"\r\n")
    body.write(b"--b0--\r\n")
    status, _, resp = emulator.request(
        "POST", f"/v1/{store}/dicomWeb/studies", body=body.getvalue(), timeout=300,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0',
                 "Accept": "application/dicom+json"})
    assert status == 200, resp[:500]
    m = dicomfs_mount
    d = m.path(ds_id, st_id, "studies", study, series)
    r = run("ls", d)
    assert r.returncode == 0, r.stderr
    names = r.stdout.split()
    assert len(names) == n
    assert sorted(names) == sorted(s + ".dcm" for s in sops)
    # sizes before any read: one lstat resolves the whole series
    assert os.stat(os.path.join(d, names[-1])).st_size == len(template)
    r = run("du", "-sb", d)
    assert int(r.stdout.split()[0]) == n * len(template)
