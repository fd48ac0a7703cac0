"""upload_nice=N on a real mount: the nice value of each dicomfs thread, read
from /proc/PID/task/TID/stat (field 19) while uploads are in flight, by
thread name (/proc/PID/task/TID/comm; dicomfs names its threads: dfs-upload,
dfs-stream, dfs-coord, ...; the FUSE threads keep the program's name).

The upload threads run at the requested nice, every other thread at the nice
dicomfs was started with. A bad value is refused before mounting."""
import os
import subprocess

import pytest

import resilience_util as ru
from resilience_util import res_mounts  # noqa: F401  (fixture)

UPLOAD_THREADS = ("dfs-upload", "dfs-stream")
FUSE_SIDE = ("dfs-coord", "dfs-jflush", "dfs-spoolsync")


def thread_nices(pid):
    """{tid: (name, nice)} of every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        base = "/proc/%d/task/%s/" % (pid, tid)
        try:
            with open(base + "comm") as f:
                name = f.read().strip()
            with open(base + "stat") as f:
                stat = f.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        # Fields after "(comm)" start at field 3; nice is field 19.
        out[int(tid)] = (name, int(stat.rpartition(")")[2].split()[19 - 3]))
    return out


@pytest.mark.parametrize("opt,expected", [(None, 10), ("upload_nice=7", 7),
                                          ("upload_nice=0", None)])
def test_upload_threads_run_at_upload_nice(emulator_factory, res_mounts, tmp_path,  # noqa: F811
                                           opt, expected):
    base = os.getpriority(os.PRIO_PROCESS, 0)  # dicomfs inherits the test's nice
    assert base < 7, "run the tests at a nice below 7 (now %d)" % base
    if expected is None:
        expected = base
    # Slow uploads (1.5 s each, 2 at a time), so that they are in flight when
    # looked at, even on a loaded machine.
    emu = emulator_factory("--fault-latency-ms", "1500", "--fault-paths", "/upload/")
    m = res_mounts(emu, uploads=2, extra_opts=[opt] if opt else [])
    src = str(tmp_path / "src")
    ru.make_tree(src, 6, studies=1)
    rc, err = ru.cp_r(src, m.import_dir, timeout=60)
    assert rc == 0, err
    assert ru.wait_until(lambda: m.status()[0].get("uploading", 0) > 0, 30), m.log_tail()

    threads = thread_nices(m.proc.pid)
    main_name = threads[m.proc.pid][0]
    by_kind = {"upload": [], "fuse": [], "other": []}
    for name, nice in threads.values():
        if name in UPLOAD_THREADS:
            by_kind["upload"].append(nice)
        elif name == main_name or name in FUSE_SIDE:
            by_kind["fuse"].append(nice)
        else:
            by_kind["other"].append((name, nice))
    names = sorted({n for n, _ in threads.values()})
    assert len(by_kind["upload"]) >= 2, names  # uploads=2: two workers at least
    assert len(by_kind["fuse"]) >= 2, names  # the main thread and FUSE's workers
    assert "dfs-coord" in names and "dfs-jflush" in names, names
    assert set(by_kind["upload"]) == {expected}, threads
    assert set(by_kind["fuse"]) == {base}, threads
    # Any other thread (e.g. the mount-time primer) is not an upload thread.
    assert all(nice == base for _, nice in by_kind["other"]), threads


def test_streaming_upload_thread_runs_at_upload_nice(emulator_factory, res_mounts):  # noqa: F811
    """A file still being written uploads from a dfs-stream thread once it
    reaches stream_min (1 MiB here): that thread runs at upload_nice too."""
    from dicom_samples import large_instance_header
    from pydicom.uid import generate_uid
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert base < 7, "run the tests at a nice below 7 (now %d)" % base
    emu = emulator_factory("--fault-latency-ms", "1500", "--fault-paths", "/upload/")
    m = res_mounts(emu, extra_opts=["upload_nice=7", "stream_min=1"])
    side = 1024  # 2 MiB of 16-bit pixels
    head = large_instance_header(generate_uid(), generate_uid(), generate_uid(), side,
                                 ("Stream^Nice", "NICE-1"))
    dst = os.path.join(m.import_dir, "big.dcm")
    with open(dst, "wb") as f:  # held open: the stream runs while it is written
        f.write(head)
        f.write(bytes(side * side))
        f.flush()
        assert ru.wait_until(lambda: any(
            n == "dfs-stream" for n, _ in thread_nices(m.proc.pid).values()), 30), m.log_tail()
        streams = [nice for n, nice in thread_nices(m.proc.pid).values() if n == "dfs-stream"]
        f.write(bytes(side * side))
    assert streams and set(streams) == {7}, streams
    wrc, wout = m.wait(timeout=120)
    assert wrc == 0, wout


@pytest.mark.parametrize("value", ["99", "-1", "20", "x"])
def test_bad_upload_nice_is_refused_before_mounting(emulator, res_mounts, value):  # noqa: F811
    m = res_mounts(emulator, start=False, extra_opts=["upload_nice=" + value])
    p = subprocess.run(m.args(), capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    rc, err = p.returncode, p.stderr
    assert rc == 1, (rc, err)
    assert not os.path.ismount(m.mnt)
    assert "bad upload_nice '%s': expected an integer in 0..19" % value in err, err
