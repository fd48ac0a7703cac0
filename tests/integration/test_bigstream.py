"""Streaming uploads of large files (fs/uploader.c, "streaming"): real dicomfs
mounts of the emulator.

A file written sequentially into import/ starts an upload session once
32 MiB with the DICM magic are written; chunks follow as the file grows and
the final chunk goes after close() accepted it. Checked here: a 100 MiB cp is
imported byte-identical (retrieved with DICOMweb straight from the
emulator) and its upload started before close() (the emulator's session
file holds data while the writer still has the file open); a file rewritten
in the middle is imported with its final content; a large file that starts
like DICOM but is not is rejected and leaves no staged object nor upload
session; kill -9 of dicomfs while the file is written or while its stream
finishes, then a remount: the file is imported exactly once.

Big files: pydicom writes the header, the Pixel Data value is appended in
1 MiB pieces of random bytes (never all in memory).
"""
import glob
import hashlib
import os
import signal
import subprocess
import time

import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.uid import generate_uid  # noqa: E402

from dicom_samples import large_instance_header  # noqa: E402
from resilience_util import file_state  # noqa: E402
from test_import import (ImportMount, STORE_NAME, listed_files, mounts,  # noqa: F401,E402
                         staged_objects, store_uids, workdir)

MIB = 1 << 20


def big_header(sop, study, series, pixel_bytes):
    """Part-10 header up to and including the Pixel Data element header (OW,
    explicit VR LE); the caller appends pixel_bytes of pixel values."""
    side = int((pixel_bytes // 2) ** 0.5)
    assert side * side * 2 == pixel_bytes
    return large_instance_header(study, series, sop, side, ("Stream^Big", "BIG-1"))


def pixel_size(approx_mib):
    side = int((approx_mib * MIB // 2) ** 0.5)
    return side * side * 2


class BigFile:
    """A big DICOM file's pieces: header bytes, then pixel data generated
    piecewise from a seed (so the same bytes can be written again)."""

    def __init__(self, approx_mib, seed):
        self.study, self.series, self.sop = generate_uid(), generate_uid(), generate_uid()
        self.pixels = pixel_size(approx_mib)
        self.header = big_header(self.sop, self.study, self.series, self.pixels)
        self.seed = seed
        self.size = len(self.header) + self.pixels

    def piece(self, i, n):
        """Deterministic pseudo-random bytes for pixel piece i (n bytes)."""
        out = bytearray()
        h = hashlib.sha256(b"%d:%d" % (self.seed, i)).digest()
        while len(out) < n:
            out += hashlib.shake_256(h + len(out).to_bytes(8, "little")).digest(min(n - len(out), 65536))
        return bytes(out)

    def pieces(self):
        yield self.header
        left, i = self.pixels, 0
        while left:
            n = min(MIB, left)
            yield self.piece(i, n)
            left -= n
            i += 1

    def write(self, path):
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for p in self.pieces():
                f.write(p)
                h.update(p)
        return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                return h.hexdigest()
            h.update(b)


def retrieve_sha256(emu, big):
    """SHA-256 of the instance as the emulator's DICOMweb API returns it."""
    path = "/v1/%s/dicomWeb/studies/%s/series/%s/instances/%s" % (
        STORE_NAME, big.study, big.series, big.sop)
    status, headers, body = emu.request(
        "GET", path, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                        "transfer-syntax=*"}, timeout=180)
    assert status == 200, (status, body[:300])
    ctype = headers.get("Content-Type", "")
    if "multipart" in ctype:
        boundary = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
        parts = body.split(b"--" + boundary)
        assert len(parts) >= 3, "no part in the multipart answer"
        part = parts[1]
        head, _, data = part.partition(b"\r\n\r\n")
        body = data[:-2] if data.endswith(b"\r\n") else data
    return hashlib.sha256(body).hexdigest()


def session_bytes(emu):
    """Bytes held by the emulator's open resumable upload sessions."""
    return sum(os.path.getsize(p) for p in
               glob.glob(os.path.join(emu.data_dir, "gcs", "uploads", "*.part")))


def wait_for(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def streamed_lines(m):
    log = m.m.log_text()
    return ([l for l in log.splitlines() if "streaming upload to" in l and "started" in l],
            [l for l in log.splitlines() if "streamed upload of" in l and "done" in l],
            [l for l in log.splitlines() if "streaming upload abandoned" in l])


def wait_done(m, timeout=240):
    w = m.wait(timeout=timeout)
    assert w.returncode == 0, (w.stdout, w.stderr, m.log())
    return w


def assert_no_staged_left(emu):
    assert wait_for(lambda: staged_objects(emu) == [], 15, 0.2), staged_objects(emu)


def test_big_cp_streams_and_imports_byte_identical(mounts, emulator, workdir):
    big = BigFile(100, seed=1)
    src = os.path.join(workdir, "big.dcm")
    want = big.write(src)
    m = mounts(commit_delay=0.5)
    r = subprocess.run(["cp", src, os.path.join(m.import_dir(), "big.dcm")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_done(m)
    started, done, abandoned = streamed_lines(m)
    assert len(started) == 1 and len(done) == 1 and not abandoned, m.log()
    assert "%d bytes" % big.size in done[0]
    assert store_uids(emulator)[big.sop] == 1
    assert retrieve_sha256(emulator, big) == want
    counts, failed = m.status()
    assert counts["imported"] == 1 and not failed
    assert counts["bytes_uploaded"] == big.size
    assert_no_staged_left(emulator)
    assert session_bytes(emulator) == 0


def test_big_upload_starts_before_close(mounts, emulator, workdir):
    """The writer keeps the file open: the emulator already holds its first
    chunks; after close() only the rest is sent."""
    big = BigFile(100, seed=2)
    m = mounts(commit_delay=0.5)
    h = hashlib.sha256()
    with open(os.path.join(m.import_dir(), "open.dcm"), "wb") as f:
        for p in big.pieces():
            f.write(p)
            h.update(p)
        f.flush()
        # Still open: nothing was accepted, yet the upload is under way.
        assert wait_for(lambda: session_bytes(emulator) >= 48 * MIB, 60), (
            session_bytes(emulator), m.log())
        counts, _ = m.status()
        assert counts["uploading"] == 0 and counts["uploaded"] == 0
    wait_done(m)
    started, done, abandoned = streamed_lines(m)
    assert len(started) == 1 and len(done) == 1 and not abandoned, m.log()
    assert retrieve_sha256(emulator, big) == h.hexdigest()
    assert_no_staged_left(emulator)


def test_big_rewritten_in_the_middle_imports_the_final_content(mounts, emulator, workdir):
    big = BigFile(100, seed=3)
    m = mounts(commit_delay=0.5)
    dst = os.path.join(m.import_dir(), "rewritten.dcm")
    pieces = list(big.pieces())  # ~100 x 1 MiB; fine in a test
    with open(dst, "wb") as f:
        written = 0
        for p in pieces:
            if written >= 64 * MIB:
                break
            f.write(p)
            written += len(p)
        f.flush()
        assert wait_for(lambda: session_bytes(emulator) >= 16 * MIB, 60), m.log()
        # Overwrite 1 MiB of pixel values at 40 MiB, then finish the file.
        f.seek(40 * MIB)
        patch = big.piece(999, MIB)
        f.write(patch)
        f.seek(written)
        rest = b"".join(pieces)[written:]
        f.write(rest)
    final = bytearray(b"".join(pieces))
    final[40 * MIB:41 * MIB] = patch
    want = hashlib.sha256(final).hexdigest()
    assert sha256_file(dst) == want  # what dicomfs shows before the import
    wait_done(m)
    started, done, abandoned = streamed_lines(m)
    assert len(started) == 1 and len(abandoned) == 1 and not done, m.log()
    assert store_uids(emulator)[big.sop] == 1
    assert retrieve_sha256(emulator, big) == want
    assert_no_staged_left(emulator)
    # The abandoned session was cancelled: nothing of it stays.
    assert wait_for(lambda: session_bytes(emulator) == 0, 10), session_bytes(emulator)


def test_big_not_dicom_is_rejected_and_leaves_nothing(mounts, emulator, workdir):
    """Starts like Part 10 (preamble + DICM, so it streams), then garbage:
    close() fails with EINVAL, the session is cancelled, no object staged."""
    m = mounts(commit_delay=0.5)
    src = os.path.join(workdir, "fake.dcm")
    with open(src, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        for i in range(64):
            f.write(hashlib.shake_256(b"x%d" % i).digest(MIB))
    r = subprocess.run(["cp", src, os.path.join(m.import_dir(), "fake.dcm")],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr, r.stderr
    # dropped; an empty entry stays as the refusal's visible trace until removed
    assert wait_for(lambda: os.path.exists(os.path.join(m.import_dir(), "fake.dcm")) and
                    os.path.getsize(os.path.join(m.import_dir(), "fake.dcm")) == 0, 10)
    os.unlink(os.path.join(m.import_dir(), "fake.dcm"))
    assert "fake.dcm" not in os.listdir(m.import_dir())
    started, done, abandoned = streamed_lines(m)
    assert len(started) == 1 and len(abandoned) == 1 and not done, m.log()
    assert wait_for(lambda: session_bytes(emulator) == 0, 10), session_bytes(emulator)
    assert staged_objects(emulator) == []
    # A plain non-DICOM file never starts a stream at all.
    junk = os.path.join(workdir, "junk.bin")
    with open(junk, "wb") as f:
        for i in range(40):
            f.write(hashlib.shake_256(b"j%d" % i).digest(MIB))
    r = subprocess.run(["cp", junk, m.import_dir()], capture_output=True, text=True)
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r.stderr
    assert len(streamed_lines(m)[0]) == 1
    assert staged_objects(emulator) == []
    counts, failed = m.status()
    assert counts["imported"] == 0 and counts["failed"] == 0


def kill9(m):
    m.m.proc.send_signal(signal.SIGKILL)
    m.m.proc.wait()
    m.m.stop()  # fusermount3 -u of the dead mount
    assert m.m.exit_codes[-1] == -9
    m.m.exit_codes.pop()  # on purpose


def test_big_kill9_while_written_then_copied_again_imports_once(mounts, emulator, workdir):
    big = BigFile(100, seed=4)
    src = os.path.join(workdir, "big.dcm")
    want = big.write(src)
    m = mounts(commit_delay=0.5)
    f = open(os.path.join(m.import_dir(), "k.dcm"), "wb")
    try:
        with open(src, "rb") as s:
            f.write(s.read(64 * MIB))
        f.flush()
        assert wait_for(lambda: session_bytes(emulator) >= 16 * MIB, 60), m.log()
        kill9(m)
    finally:
        try:
            f.close()
        except OSError:
            pass  # the daemon is gone: ENOTCONN
    m.remount(commit_delay=0.5)
    # Never accepted: not listed after the restart.
    assert "k.dcm" not in listed_files(m.import_dir())
    r = subprocess.run(["cp", src, os.path.join(m.import_dir(), "k.dcm")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_done(m)
    assert store_uids(emulator)[big.sop] == 1
    assert retrieve_sha256(emulator, big) == want
    assert_no_staged_left(emulator)


def test_big_kill9_after_close_while_stream_finishes_imports_once(mounts, emulator, workdir):
    """cp returned (accepted, in the journal) while the stream still sends
    the rest: kill -9 then, remount: uploaded again from the spool file and
    imported exactly once, byte-identical."""
    big = BigFile(200, seed=5)
    src = os.path.join(workdir, "big.dcm")
    want = big.write(src)
    m = mounts(commit_delay=0.5)
    r = subprocess.run(["cp", src, os.path.join(m.import_dir(), "f.dcm")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    kill9(m)
    finished_before_kill = len(streamed_lines(m)[1])
    m.remount(commit_delay=0.5)
    wait_done(m)
    assert store_uids(emulator)[big.sop] == 1
    assert retrieve_sha256(emulator, big) == want
    assert_no_staged_left(emulator)
    print("stream finished before the kill: %d" % finished_before_kill)


def test_big_rsync_temp_name_then_rename_streams(mounts, emulator, workdir):
    """rsync writes .NAME.XXXXXX sequentially and renames it after close():
    the stream's object name does not depend on the display name."""
    big = BigFile(64, seed=6)
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    want = big.write(os.path.join(src, "r.dcm"))
    m = mounts(commit_delay=0.5)
    r = subprocess.run(["rsync", "-a", src + "/", m.import_dir() + "/"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    wait_done(m)
    started, done, abandoned = streamed_lines(m)
    assert len(started) == 1 and len(done) == 1 and not abandoned, m.log()
    assert retrieve_sha256(emulator, big) == want
    assert listed_files(m.import_dir()) == ["r.dcm"]  # remembered under rsync's final name
    assert file_state(os.path.join(m.import_dir(), "r.dcm")) == "imported"
    assert_no_staged_left(emulator)
