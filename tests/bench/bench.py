#!/usr/bin/python3
"""dicomfs benchmarks: ratios against baselines measured in the same run.

Everything runs against dicomfs-emulator on 127.0.0.1 (started with --no-auth so
that no path pays for tokens), built without sanitizers (build-release/).

Measured, each --repeat times (medians reported):
  a  cp -r into STORE/import/ vs cp -r to a directory on the cache disk
  b  start of cp until the import operation is done (`dicomfs wait`) vs the raw
     limit: curl --parallel (same concurrency) to the bucket + one import call
  c  rclone copy --transfers=N + one import; rclone mount --vfs-cache-mode writes
     + cp + one import
  d  one large file through dicomfs vs one raw curl upload + import
  e  peak RSS of dicomfs (VmHWM)
  f  ls -l of DATASET/operations/ holding --ops operations and of import/
     holding N pending files: first and cached
  g  a and b at several N: time per file

Output: results.md (table of ratios and targets), results.json, files_per_s.png
in tests/bench/results/<timestamp>/.

usage: tests/bench/bench.py [--n 2000] [--size-kib 512] [--studies 20]
         [--sizes 500,2000,8000] [--big-mib 1024] [--repeat 3] [--uploads 16]
         [--ops 1000] [--smoke | --quick] [--docs]
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))

PROJECT, LOCATION, DATASET, BUCKET = "bench", "us-central1", "ds", "staging"
DATASET_NAME = f"projects/{PROJECT}/locations/{LOCATION}/datasets/{DATASET}"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def build():
    """An optimised build without sanitizers of the two programs measured,
    reconfigured so newly landed modules are compiled. $DICOMFS_BENCH_BUILD
    measures an existing build dir instead (only its targets are rebuilt)."""
    build_dir = os.environ.get("DICOMFS_BENCH_BUILD")
    if not build_dir:
        build_dir = os.path.join(TOP, "build-release")
        reconf = ["--reconfigure"] if os.path.exists(os.path.join(build_dir, "build.ninja")) else []
        run(["meson", "setup", *reconf, build_dir, "--buildtype=release"], cwd=TOP,
            stdout=subprocess.DEVNULL)
    run(["ninja", "-C", build_dir, "fs/dicomfs", "contrib/emulator/dicomfs-emulator"],
        stdout=subprocess.DEVNULL)
    return build_dir


# ---------------------------------------------------------------- data

def make_dicom(path, study, series, sop, size):
    """One valid Part-10 file of about `size` bytes.

    pydicom writes the file meta and the data set up to the pixel module; the
    Pixel Data element (7FE0,0010), the last tag, is appended in 8 MiB chunks
    of random 12-bit values so that a 1 GiB file never sits in memory."""
    import numpy as np
    from dicom_samples import large_instance_header

    side = max(8, int((max(size - 1024, 64) // 2) ** 0.5))
    with open(path, "wb") as f:
        f.write(large_instance_header(study, series, sop, side, ("BENCH^DATA", "BENCH")))
    nbytes = side * side * 2
    rng = np.random.default_rng(int.from_bytes(sop.encode()[-8:], "little"))
    with open(path, "ab") as f:
        left = nbytes
        while left:
            k = min(left, 8 << 20)
            f.write(rng.integers(0, 4096, k // 2, dtype=np.uint16).tobytes())
            left -= k


def check_dicom(path):
    """pydicom reads the file back: Part 10, and Pixel Data is Rows x Columns x 2."""
    import pydicom

    ds = pydicom.dcmread(path, defer_size=4096)
    elem = ds._dict.get(0x7FE00010)  # RawDataElement: length without reading the value
    if (ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.1" or ds.is_implicit_VR
            or elem is None or elem.length != ds.Rows * ds.Columns * 2):
        raise RuntimeError(f"{path}: generated file does not read back with pydicom")


def make_tree(root, n, size, studies):
    """n files over `studies` studies (2 series each); returns the file list."""
    from pydicom.uid import generate_uid

    os.makedirs(root, exist_ok=True)
    files = []
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [[generate_uid(), generate_uid()] for _ in range(studies)]
    for i in range(n):
        s = i % studies
        se = (i // studies) % 2
        d = os.path.join(root, f"study{s:03d}", f"series{se}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"img{i:05d}.dcm")
        make_dicom(p, study_uids[s], series_uids[s][se], generate_uid(), size)
        files.append(p)
    check_dicom(files[0])
    check_dicom(files[-1])
    return files


# ---------------------------------------------------------------- services

EMU_PREFIX = os.environ.get("EMU_PREFIX", "").split()


class Emulator:
    def __init__(self, build_dir, work, extra=(), tls=False):
        """extra: more emulator flags (the cloud profile's timing); tls: serve
        https with a throwaway CA (self.ca) that every client is given."""
        self.data = os.path.join(work, "emulator-data")
        os.makedirs(self.data)
        self.ca = os.path.join(work, "tls", "ca.pem") if tls else None
        self.ssl = None
        self.log = open(os.path.join(work, "emulator.log"), "w+")
        self.proc = subprocess.Popen(
            [*EMU_PREFIX, os.path.join(build_dir, "contrib/emulator/dicomfs-emulator"),
             "--listen", "127.0.0.1:0", "--data", self.data, "--no-auth",
             "--project", PROJECT, "--location", LOCATION, "--dataset", DATASET,
             "--store", "warmup", "--bucket", BUCKET, *extra,
             *(["--tls-dir", os.path.dirname(self.ca)] if tls else [])],
            stdout=subprocess.PIPE, stderr=self.log, text=True)

        self.env = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("export "):
                for kv in line.split()[1:]:
                    k, _, v = kv.partition("=")
                    self.env[k] = v
            if "ready on" in line:
                self.url = line.strip().rsplit(" ", 1)[-1].rstrip("/")
                if tls:  # ca.pem exists once the emulator is ready
                    import ssl
                    self.ssl = ssl.create_default_context(cafile=self.ca)
                return
        raise RuntimeError("emulator did not start; see emulator.log")

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120, context=self.ssl) as r:
            data = r.read()
            return json.loads(data) if data.strip() else {}

    def create_store(self, store):
        self.api("POST", f"/v1/{DATASET_NAME}/dicomStores?dicomStoreId={store}", {})
        return f"{DATASET_NAME}/dicomStores/{store}"

    def import_and_wait(self, store_name, uri):
        op = self.api("POST", f"/v1/{store_name}:import", {"gcsSource": {"uri": uri}})
        return self.wait_op(op["name"])

    def wait_op(self, name):
        while True:
            op = self.api("GET", f"/v1/{name}")
            if op.get("done"):
                return op
            time.sleep(0.05)

    def curl_tls(self):
        """curl's flags for this emulator: the CA when it serves https."""
        return ["--cacert", self.ca] if self.ca else []

    def list_objects(self, prefix):
        """Names of the objects under prefix in the bucket (all pages)."""
        names, token = [], ""
        while True:
            q = urllib.parse.urlencode({"prefix": prefix, "maxResults": 1000,
                                        "fields": "items(name),nextPageToken",
                                        **({"pageToken": token} if token else {})})
            page = self.api("GET", f"/storage/v1/b/{BUCKET}/o?{q}")
            names += [o["name"] for o in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return names

    def count_objects(self, prefix):
        return len(self.list_objects(prefix))

    def delete_objects(self, prefix):
        """Every object under prefix, 100 deletes per batch request."""
        names = self.list_objects(prefix)
        for i in range(0, len(names), 100):
            body = "".join(f"--b\r\nContent-Type: application/http\r\n\r\nDELETE /storage/v1/b/"
                           f"{BUCKET}/o/{urllib.parse.quote(n, safe='')} HTTP/1.1\r\n\r\n"
                           for n in names[i:i + 100]) + "--b--\r\n"
            req = urllib.request.Request(self.url + "/batch/storage/v1", method="POST",
                                         data=body.encode(),
                                         headers={"Content-Type": "multipart/mixed; boundary=b"})
            with urllib.request.urlopen(req, timeout=120, context=self.ssl) as r:
                answer = r.read().decode(errors="replace")
            done = answer.count("HTTP/1.1 204") + answer.count("HTTP/1.1 404")
            if done != len(names[i:i + 100]):
                raise RuntimeError(f"batch delete under {prefix}: {done} of "
                                   f"{len(names[i:i + 100])} deleted")

    def delete_store(self, store):
        """The DICOM store and its instances (the emulator unlinks their files)."""
        self.api("DELETE", f"/v1/{DATASET_NAME}/dicomStores/{store}")

    def wait_bucket_empty(self, timeout=120):
        """Polls (one list request each) until the bucket is empty, e.g. every
        object dicomfs staged was deleted after its import; returns the polls."""
        polls, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            polls += 1
            if not self.api("GET", f"/storage/v1/b/{BUCKET}/o?maxResults=1").get("items"):
                return polls
            time.sleep(0.1)
        raise RuntimeError("objects still in the bucket (staged objects not deleted?)")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Mount:
    def __init__(self, build_dir, emu, work, uploads, commit_delay=None, name="mnt"):
        """commit_delay None: dicomfs's default, as a user gets it."""
        self.build_dir = build_dir
        self.mnt = os.path.join(work, name)
        self.cache = os.path.join(work, name + "-cache")
        os.makedirs(self.mnt)
        os.makedirs(self.cache, mode=0o700)
        self.log = open(os.path.join(work, name + ".log"), "w")
        env = dict(os.environ, **emu.env)
        self.proc = subprocess.Popen(
            [self.exe, f"projects/{PROJECT}/locations/{LOCATION}", self.mnt, "-f",
             "-o", f"staging=gs://{BUCKET}/dicomfs,cache_dir={self.cache},no_auth,"
                   + (f"uploads={uploads}," if uploads else "")
                   + (f"commit_delay={commit_delay}," if commit_delay is not None else "")
                   + (f"ca_file={emu.ca}," if emu.ca else "")
                   + "".join(o + "," for o in os.environ.get("DICOMFS_BENCH_OPTS", "").split(",") if o) +
                   f"endpoint={emu.url}/,storage_endpoint={emu.url}"],
            stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 30
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"dicomfs did not mount; see {self.log.name}")
            time.sleep(0.05)

    @property
    def exe(self):
        return os.path.join(self.build_dir, "fs", "dicomfs")

    def store_dir(self, store):
        return os.path.join(self.mnt, DATASET, store)

    def wait(self, store):
        return subprocess.run([self.exe, "wait", self.store_dir(store)],
                              stdout=subprocess.DEVNULL).returncode

    def peak_rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return -1

    def stop(self):
        subprocess.run(["fusermount3", "-u", self.mnt])
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


DROP_CACHES = True


def drop_caches():
    """Same start for every variant: dirty pages written, page cache dropped
    (machine-wide, so --smoke does not do it)."""
    os.sync()
    if not DROP_CACHES:
        return
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def proc_cpu(pid):
    """CPU seconds (user + system) used so far by a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    """CPU seconds of the finished child processes (cp, curl, rclone...)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU spent during a variant: by the client side (finished children such
    as cp or curl, plus the dicomfs process when given) and by the emulator,
    which stands in for Google's side and shares this machine's cores."""

    def __init__(self, emu, mount=None):
        self.emu, self.mount = emu, mount
        self.c0 = children_cpu()
        self.e0 = proc_cpu(emu.proc.pid)
        self.d0 = proc_cpu(mount.proc.pid) if mount else 0.0

    def stop(self):
        """(client, emulator) CPU seconds so far; self.split: the client's
        (children, mounted process) parts."""
        children = children_cpu() - self.c0
        fs = proc_cpu(self.mount.proc.pid) - self.d0 if self.mount else 0.0
        self.split = (children, fs)
        return children + fs, proc_cpu(self.emu.proc.pid) - self.e0


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


# ---------------------------------------------------------------- variants

def cloud_emulator_flags(args):
    """The cloud profile: the emulator's realistic service timing, scaled (see
    --cloud-time-scale), a per-request latency and a shared bandwidth cap."""
    return ["--profile", "realistic", "--time-scale", str(args.cloud_time_scale),
            "--latency-ms", str(args.cloud_latency_ms),
            "--bandwidth-mbps", str(args.cloud_mbps)]


class Bench:
    def __init__(self, args, build_dir, work, profile="cpu", emu_extra=()):
        """emu_extra: more emulator flags (ab.py --emu-args)."""
        self.args = args
        self.build_dir = build_dir
        self.work = work
        self.profile = profile
        cloud = profile == "cloud"
        self.emu = Emulator(build_dir, work,
                            [*(cloud_emulator_flags(args) if cloud else ()), *emu_extra],
                            tls=cloud)
        # The cloud profile measures dicomfs as a user gets it (adaptive
        # upload concurrency) unless --fs-uploads; the CPU view pins it to
        # curl's and rclone's --uploads so CPU per file compares like with like.
        self.mount = Mount(build_dir, self.emu, work,
                           args.fs_uploads if cloud else args.uploads)
        self.counter = 0
        self.leftover = []  # (store, object prefix or None) of measured variants

    def clean(self):
        """A measured variant's data off the machine, right after it (outside
        its clock): the objects it left in the bucket (dicomfs deletes its own
        staged objects: wait for that) and its DICOM store's instances, then
        written back, so that every variant starts from the same state (see
        drop_caches) and a full run holds one variant's data at a time."""
        for store, prefix in self.leftover:
            if prefix:
                self.emu.delete_objects(prefix)
            else:
                self.emu.wait_bucket_empty()
            self.emu.delete_store(store)
        self.leftover = []
        os.sync()

    def fresh_store(self, tag, mount=None):
        """A new empty DICOM store. With a mount, made as a user would, by
        mkdir in it (visible at once); else by the API (baselines)."""
        self.counter += 1
        store = f"{tag}{self.counter}"
        name = f"{DATASET_NAME}/dicomStores/{store}"
        if mount is None:
            self.emu.create_store(store)
            return store, name
        os.mkdir(mount.store_dir(store))
        if not os.path.isdir(os.path.join(mount.store_dir(store), "import")):
            raise RuntimeError(f"store {store} made by mkdir has no import/")
        return store, name

    def local_cp(self, src):
        dst = os.path.join(self.mount.cache, "..", f"localcp{self.counter}")
        self.counter += 1
        drop_caches()
        t = timed(lambda: run(["cp", "-r", src, dst]))
        shutil.rmtree(dst)
        return t

    def local_cp_fsync(self, src):
        """The same copy with each file fsync'ed before the next, as close() in
        import/ guarantees: the floor for (a) on this disk (information)."""
        dst = os.path.join(self.mount.cache, "..", f"localsync{self.counter}")
        self.counter += 1
        drop_caches()

        def copy():
            for d, _, names in os.walk(src):
                out = os.path.join(dst, os.path.relpath(d, src))
                os.makedirs(out, exist_ok=True)
                for n in names:
                    with open(os.path.join(d, n), "rb") as fi, \
                            open(os.path.join(out, n), "wb") as fo:
                        shutil.copyfileobj(fi, fo, 1 << 20)
                        fo.flush()
                        os.fsync(fo.fileno())
        t = timed(copy)
        shutil.rmtree(dst)
        return t

    def dicomfs_cp(self, src, on_copied=None, before=None):
        """(cp seconds, seconds until the import operation is done); the
        client CPU in self.cpu. before() runs after the cache drop, right
        before the clock starts (profile.py attaches its tracers there);
        on_copied(meter) is called when cp has ended (floor.py)."""
        store, _ = self.fresh_store("fs", self.mount)
        drop_caches()
        if before:
            before()
        meter = CpuMeter(self.emu, self.mount)
        t0 = time.monotonic()
        run(["cp", "-r", src, os.path.join(self.mount.store_dir(store), "import", "run")])
        t_cp = time.monotonic() - t0
        if on_copied:
            on_copied(meter)
        rc = self.mount.wait(store)
        t_done = time.monotonic() - t0
        self.cpu = meter.stop()
        self.leftover.append((store, None))
        if rc != 0:
            raise RuntimeError(f"dicomfs wait exited {rc} for store {store}")
        return t_cp, t_done

    def raw_parallel(self, files):
        """curl --parallel uploads + one import: the limit dicomfs approaches."""
        store, name = self.fresh_store("raw")
        prefix = f"raw/{store}"
        cfg = os.path.join(self.work, f"curl-{store}.cfg")
        with open(cfg, "w") as f:
            for i, p in enumerate(files):
                f.write(f'url = "{self.emu.url}/upload/storage/v1/b/{BUCKET}/o'
                        f'?uploadType=media&name={prefix}%2F{i:06d}.dcm"\n')
                f.write(f'upload-file = "{p}"\n')
                f.write('output = "/dev/null"\n')
        drop_caches()
        meter = CpuMeter(self.emu)
        t0 = time.monotonic()
        run(["curl", "-sS", "--no-progress-meter", "--fail", *self.emu.curl_tls(),
             "--parallel", "--parallel-max", str(self.args.uploads),
             "-X", "POST", "-H", "Content-Type: application/dicom", "-K", cfg])
        op = self.emu.import_and_wait(name, f"gs://{BUCKET}/{prefix}/**")
        t = time.monotonic() - t0
        self.cpu = meter.stop()
        self.leftover.append((store, prefix + "/"))
        if "error" in op:
            raise RuntimeError(f"raw import failed: {op['error']}")
        return t

    def rclone_env(self):
        return dict(os.environ, RCLONE_CONFIG_BENCH_TYPE="google cloud storage",
                    RCLONE_CONFIG_BENCH_ANONYMOUS="true",
                    RCLONE_CONFIG_BENCH_ENDPOINT=f"{self.emu.url}/storage/v1/",
                    RCLONE_CONFIG_BENCH_BUCKET_POLICY_ONLY="true",
                    **({"RCLONE_CA_CERT": self.emu.ca} if self.emu.ca else {}))

    def rclone_copy(self, src):
        store, name = self.fresh_store("rclone")
        prefix = f"rclone/{store}"
        drop_caches()
        t0 = time.monotonic()
        run(["rclone", "copy", src, f"bench:{BUCKET}/{prefix}",
             f"--transfers={self.args.uploads}", "--gcs-no-check-bucket"],
            env=self.rclone_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        op = self.emu.import_and_wait(name, f"gs://{BUCKET}/{prefix}/**")
        t = time.monotonic() - t0
        self.leftover.append((store, prefix + "/"))
        if "error" in op:
            raise RuntimeError(f"rclone import failed: {op['error']}")
        return t

    def rclone_mount(self, src, n):
        """rclone mount --vfs-cache-mode writes, cp -r into it, one import.

        rclone uploads a closed file in the background (--vfs-write-back, 0 s
        here) and does not wait for those uploads when unmounted, so the clock
        stops only once the bucket holds all n objects and the import is done."""
        store, name = self.fresh_store("rmount")
        prefix = f"rmount/{store}"
        self.leftover.append((store, prefix + "/"))
        mnt = os.path.join(self.work, f"rclone-mnt-{store}")
        cache = os.path.join(self.work, f"rclone-cache-{store}")
        os.makedirs(mnt)
        proc = subprocess.Popen(
            ["rclone", "mount", f"bench:{BUCKET}/{prefix}", mnt, "--vfs-cache-mode", "writes",
             "--vfs-write-back", "0s", "--cache-dir", cache, f"--transfers={self.args.uploads}",
             "--gcs-no-check-bucket"],
            env=self.rclone_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("rclone mount failed")
                time.sleep(0.05)
            drop_caches()
            t0 = time.monotonic()
            run(["cp", "-r", src + "/.", mnt])
            deadline = time.time() + 3600
            while self.emu.count_objects(prefix + "/") < n:
                if time.time() > deadline:
                    raise RuntimeError("rclone mount did not upload every file")
                time.sleep(0.1)
            op = self.emu.import_and_wait(name, f"gs://{BUCKET}/{prefix}/**")
            if "error" in op:
                raise RuntimeError(f"rclone mount import failed: {op['error']}")
            return time.monotonic() - t0
        finally:
            subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            subprocess.run(["fusermount3", "-uz", mnt], stderr=subprocess.DEVNULL)
            shutil.rmtree(cache, ignore_errors=True)

    def big_file(self, path):
        store, name = self.fresh_store("big", self.mount)
        drop_caches()
        t0 = time.monotonic()
        run(["cp", path, os.path.join(self.mount.store_dir(store), "import", "big.dcm")])
        if self.mount.wait(store) != 0:
            raise RuntimeError("big file import failed")
        t_fs = time.monotonic() - t0
        self.leftover.append((store, None))
        self.clean()
        store2, name2 = self.fresh_store("bigraw")
        drop_caches()
        t0 = time.monotonic()
        run(["curl", "-sS", "--fail", *self.emu.curl_tls(), "-o", "/dev/null", "-X", "POST", "-H",
             "Content-Type: application/dicom", "-T", path,
             f"{self.emu.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media"
             f"&name=bigraw%2F{store2}%2Fbig.dcm"])
        op = self.emu.import_and_wait(name2, f"gs://{BUCKET}/bigraw/{store2}/**")
        t_raw = time.monotonic() - t0
        self.leftover.append((store2, f"bigraw/{store2}/"))
        self.clean()
        if "error" in op:
            raise RuntimeError(f"raw big import failed: {op['error']}")
        return t_fs, t_raw

    def listings(self, src):
        """ls -l of operations/ with many ops, and of import/ with pending files."""
        out = {}
        store, name = self.fresh_store("ops")
        for _ in range(self.args.ops):
            self.emu.api("POST", f"/v1/{name}:import",
                         {"gcsSource": {"uri": f"gs://{BUCKET}/nothing-here/**"}})
        opsdir = os.path.join(self.mount.mnt, DATASET, "operations")
        time.sleep(6)  # let the mount's listing cache expire
        out["ops_first"] = timed(lambda: run(["ls", "-l", opsdir], stdout=subprocess.DEVNULL))
        out["ops_listed"] = len(os.listdir(opsdir))
        out["ops_cached"] = timed(lambda: run(["ls", "-l", opsdir], stdout=subprocess.DEVNULL))
        # Pending files: a second mount with a long commit delay keeps them pending.
        m2 = Mount(self.build_dir, self.emu, self.work, self.args.uploads, commit_delay=3600,
                   name="mnt-pending")
        try:
            pstore, _ = self.fresh_store("pending", m2)
            dst = os.path.join(m2.store_dir(pstore), "import", "p")
            run(["cp", "-r", src, dst])
            out["pending_files"] = sum(len(f) for _, _, f in os.walk(dst))
            time.sleep(6)
            out["pending_first"] = timed(lambda: run(["ls", "-lR", dst],
                                                     stdout=subprocess.DEVNULL))
            out["pending_cached"] = timed(lambda: run(["ls", "-lR", dst],
                                                      stdout=subprocess.DEVNULL))
        finally:
            m2.stop()
        return out

    def stop(self):
        self.mount.stop()
        self.emu.stop()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def tree(data_root, n, size_kib, studies, cache):
    """The data set of n files x size_kib, made once per run and shared by
    both profiles."""
    key = (n, size_kib)
    if key not in cache:
        src = os.path.join(data_root, f"n{n}x{size_kib}k")
        cache[key] = (src, make_tree(src, n, size_kib * 1024, studies))
    return cache[key]


def measure_n(bench, n, args, trees, data_root, size_kib=None, cpu_view=True):
    """The variants at one N: in the CPU view every one (local copies, rclone
    mount); in the cloud view the three that reach 'imported' (dicomfs, raw,
    rclone copy)."""
    size_kib = size_kib or args.size_kib
    src, files = tree(data_root, n, size_kib, args.studies, trees)
    r = {"n": n, "size_kib": size_kib, "local_cp": [], "local_cp_fsync": [], "fs_cp": [],
         "fs_done": [], "raw": [], "rclone_copy": [], "rclone_mount": [], "fs_cpu": [],
         "fs_emu_cpu": [], "raw_cpu": [], "raw_emu_cpu": []}
    for i in range(args.repeat):
        log(f"{bench.profile}: N={n} x {size_kib} KiB repeat {i + 1}/{args.repeat}")
        if cpu_view:
            r["local_cp"].append(bench.local_cp(src))
            r["local_cp_fsync"].append(bench.local_cp_fsync(src))
        t_cp, t_done = bench.dicomfs_cp(src)
        bench.clean()
        r["fs_cp"].append(t_cp)
        r["fs_done"].append(t_done)
        r["fs_cpu"].append(bench.cpu[0])
        r["fs_emu_cpu"].append(bench.cpu[1])
        r["raw"].append(bench.raw_parallel(files))
        bench.clean()
        r["raw_cpu"].append(bench.cpu[0])
        r["raw_emu_cpu"].append(bench.cpu[1])
        if not args.no_rclone:
            r["rclone_copy"].append(bench.rclone_copy(src))
            bench.clean()
            if cpu_view and n <= args.rclone_mount_max:
                r["rclone_mount"].append(bench.rclone_mount(src, n))
                bench.clean()
    r["median"] = {k: median(v) for k, v in r.items() if isinstance(v, list)}
    return r


def big_file(bench, args, data_root):
    big = os.path.join(data_root, f"big{args.big_mib}.dcm")
    if not os.path.exists(big):
        log(f"making a {args.big_mib} MiB file")
        make_dicom(big, "1.2.3.999", "1.2.3.999.1", "1.2.3.999.1.1", args.big_mib << 20)
        check_dicom(big)
    samples = [bench.big_file(big) for _ in range(args.big_repeat)]
    return [median([s[0] for s in samples]), median([s[1] for s in samples])]


def run_profile(profile, args, build_dir, work, data_root, trees):
    """One profile from start to end: its own emulator and mount."""
    pwork = os.path.join(work, profile)
    os.makedirs(pwork)
    bench = Bench(args, build_dir, pwork, profile)
    cloud = profile == "cloud"
    try:
        res = {"by_n": []}
        sizes = args.cloud_sizes if cloud else args.sizes
        for n in sorted({int(x) for x in sizes.split(",")} | {args.n}):
            res["by_n"].append(measure_n(bench, n, args, trees, data_root, cpu_view=not cloud))
        if cloud and args.small_n:
            res["small"] = measure_n(bench, args.small_n, args, trees, data_root,
                                     size_kib=args.small_kib, cpu_view=False)
        res["big"] = big_file(bench, args, data_root)
        if not cloud:
            log("listings")
            src, _ = tree(data_root, args.n, args.size_kib, args.studies, trees)
            res["listings"] = bench.listings(src)
        res["peak_rss_kib"] = bench.mount.peak_rss_kib()
        if cloud:
            res["emulator_flags"] = cloud_emulator_flags(args) + ["--tls-dir", "DIR"]
        return res
    finally:
        bench.stop()
        # The emulator's objects of a full cloud run take tens of GiB; the
        # next profile needs the disk (a full run once failed there with
        # the emulator answering 500 on a full disk).
        shutil.rmtree(pwork, ignore_errors=True)


class Table:
    def __init__(self):
        self.rows = []

    def row(self, name, value, target, ok):
        self.rows.append((name, value, target, "yes" if ok else "NO"))

    def lines(self):
        return (["| measure | value | target | holds |", "|---|---|---|---|"]
                + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows])


def spread(res, key, what, t, per=None):
    """g: every N's figure per file within 20% of the median over N."""
    per_file = [(per(r) if per else r["median"][key]) / r["n"] for r in res["by_n"]]
    if len(per_file) > 1:
        mid = statistics.median(per_file)
        dev = max(abs(x / mid - 1) for x in per_file)
        ns = "/".join(str(r["n"]) for r in res["by_n"])
        t.row(f"g. {what} per file, largest deviation from the median over N={ns}",
              f"{dev * 100:.0f}%", "<= 20%", dev <= 0.2)


def report_cpu(res, args):
    """The CPU view: instant plain-http emulator; copy speed, CPU, memory."""
    t = Table()
    m = next(r for r in res["by_n"] if r["n"] == args.n)["median"]
    a = m["local_cp"] / m["fs_cp"]
    t.row("a. cp -r into import/ throughput vs local cp", f"{a:.2f}", ">= 0.70", a >= 0.7)
    a2 = m["local_cp_fsync"] / m["fs_cp"]
    t.row("a. cp -r into import/ vs local copy with fsync per file", f"{a2:.2f}", "(info)", True)
    cpu = m["fs_cpu"] / m["raw_cpu"]
    t.row(f"a. client CPU per file (cp + dicomfs) vs curl's, {args.size_kib} KiB", f"{cpu:.2f}",
          "<= 2.00", cpu <= 2)
    b = m["fs_done"] / m["raw"]
    t.row("b. time to imported vs raw curl --parallel + import", f"{b:.2f}", "(info)", True)
    if m["rclone_copy"] == m["rclone_copy"]:  # not NaN
        c = m["fs_done"] / m["rclone_copy"]
        t.row("b. time to imported vs rclone copy + import", f"{c:.2f}", "(info)", True)
    if m["rclone_mount"] == m["rclone_mount"]:
        c2 = m["fs_done"] / m["rclone_mount"]
        t.row("c. time to imported vs rclone mount + cp + import", f"{c2:.2f}", "(info)", True)
    t_fs, t_raw = res["big"]
    t.row(f"d. {args.big_mib} MiB file throughput vs raw curl", f"{t_raw / t_fs:.2f}", "(info)",
          True)
    rss = res["peak_rss_kib"] / 1024
    t.row("e. dicomfs peak RSS (MiB)", f"{rss:.1f}", "<= 100", rss <= 100)
    ls = res["listings"]
    t.row(f"f. ls -l operations/ ({ls['ops_listed']} ops), first (s)", f"{ls['ops_first']:.3f}",
          "< 1", ls["ops_first"] < 1)
    t.row("f. ls -l operations/, cached (s)", f"{ls['ops_cached']:.3f}", "< 0.020",
          ls["ops_cached"] < 0.02)
    t.row(f"f. ls -lR import/ ({ls['pending_files']} pending), first (s)",
          f"{ls['pending_first']:.3f}", "< 1", ls["pending_first"] < 1)
    t.row("f. ls -lR import/ pending, cached (s)", f"{ls['pending_cached']:.3f}", "< 0.020",
          ls["pending_cached"] < 0.02)
    spread(res, "fs_cp", "time of cp", t)
    spread(res, "fs_cpu", "client CPU (cp + dicomfs)", t)
    return t


def report_cloud(res, args):
    """The cloud view: realistic timing, latency, bandwidth cap, https."""
    t = Table()
    for label, r in ((f"{args.n} x {args.size_kib} KiB",
                      next(r for r in res["by_n"] if r["n"] == args.n)),
                     (f"{args.small_n} x {args.small_kib} KiB", res.get("small"))):
        if not r:
            continue
        m = r["median"]
        b = m["fs_done"] / m["raw"]
        t.row(f"b. {label}: time to imported vs raw curl --parallel + import", f"{b:.2f}",
              "<= 1.10", b <= 1.1)
        if m["rclone_copy"] == m["rclone_copy"]:
            c = m["fs_done"] / m["rclone_copy"]
            t.row(f"b. {label}: time to imported vs rclone copy + import", f"{c:.2f}", "<= 0.60",
                  c <= 0.6)
    t_fs, t_raw = res["big"]
    d = t_raw / t_fs
    t.row(f"d. {args.big_mib} MiB file throughput vs raw curl", f"{d:.2f}", ">= 0.90", d >= 0.9)
    rss = res["peak_rss_kib"] / 1024
    t.row("e. dicomfs peak RSS (MiB)", f"{rss:.1f}", "<= 100", rss <= 100)
    spread(res, "fs_done", "time until imported", t)
    return t


def per_n_table(res, cpu_view):
    lines = ["| N | KiB | local cp s | local cp+fsync s | dicomfs cp s | dicomfs done s | raw s |"
             " rclone copy s | rclone mount s | dicomfs ms/file cp | dicomfs ms/file done |"
             " CPU ms/file: cp+dicomfs / emulator | CPU ms/file: curl / emulator |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = list(res["by_n"]) + ([res["small"]] if res.get("small") else [])
    for r in rows:
        mm = r["median"]
        lines.append(f"| {r['n']} | {r['size_kib']} | {mm['local_cp']:.2f} | "
                     f"{mm['local_cp_fsync']:.2f} | {mm['fs_cp']:.2f} | "
                     f"{mm['fs_done']:.2f} | {mm['raw']:.2f} | {mm['rclone_copy']:.2f} | "
                     f"{mm['rclone_mount']:.2f} | {mm['fs_cp'] / r['n'] * 1e3:.2f} | "
                     f"{mm['fs_done'] / r['n'] * 1e3:.2f} | "
                     f"{mm['fs_cpu'] / r['n'] * 1e3:.2f} / {mm['fs_emu_cpu'] / r['n'] * 1e3:.2f} | "
                     f"{mm['raw_cpu'] / r['n'] * 1e3:.2f} / {mm['raw_emu_cpu'] / r['n'] * 1e3:.2f} |")
    return lines


def report(results, outdir, args):
    lines = ["# dicomfs benchmark", "",
             f"N={args.n} files x {args.size_kib} KiB over {args.studies} studies, "
             f"uploads={args.uploads}, repeat={args.repeat} (medians), "
             f"{time.strftime('%Y-%m-%d %H:%M')}", ""]
    ok = True
    for profile in ("cloud", "cpu"):
        res = results["profiles"].get(profile)
        if not res:
            continue
        if profile == "cloud":
            t = report_cloud(res, args)
            lines += ["## Cloud profile", "",
                      f"Emulator `{' '.join(res['emulator_flags'])}`: https (throwaway CA given "
                      f"to dicomfs, curl and rclone), {args.cloud_latency_ms} ms per request, "
                      f"{args.cloud_mbps} Mbps shared, service timing x {args.cloud_time_scale}.",
                      ""]
        else:
            t = report_cpu(res, args)
            lines += ["## CPU view", "", "Emulator answering at once over plain http.", ""]
        lines += t.lines() + [""] + per_n_table(res, profile == "cpu") + [""]
        ok = ok and all(r[3] == "yes" for r in t.rows)
    text = "\n".join(lines)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(text)
    for profile, res in results["profiles"].items():
        plot(res, outdir, profile)
    return ok


def plot(res, outdir, profile):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in res["by_n"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("fs_done", "dicomfs (cp to imported)"),
                       ("raw", "raw limit (curl --parallel + import)"),
                       ("rclone_copy", "rclone copy + import")):
        ys = [r["n"] / r["median"][key] for r in res["by_n"]]
        if all(y == y for y in ys):
            ax.plot(ns, ys, marker="o", label=label)
    ax.set_xlabel("files (N)")
    ax.set_ylabel("files per second (cp start to imported)")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(bottom=0)  # from zero: a few % apart must look a few % apart
    ax.set_title("Import throughput against the emulator:\n"
                 + ("cloud profile (https, 30 ms per request, 400 Mbps)" if profile == "cloud"
                    else "CPU view (instant, plain http)"))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    name = "files_per_s.png" if profile == "cpu" else f"files_per_s_{profile}.png"
    fig.savefig(os.path.join(outdir, name), dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=("both", "cpu", "cloud"), default="both")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size-kib", type=int, default=512)
    p.add_argument("--studies", type=int, default=20)
    p.add_argument("--sizes", default="500,2000,8000", help="N of the CPU view's growth runs")
    p.add_argument("--cloud-sizes", default="500,2000,8000",
                   help="N of the cloud profile's per-file time spread")
    p.add_argument("--small-n", type=int, default=20000, help="cloud: many small files (0: none)")
    p.add_argument("--small-kib", type=int, default=16)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--big-repeat", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--uploads", type=int, default=16)
    p.add_argument("--fs-uploads", type=int, default=0,
                   help="cloud: uploads=N for dicomfs (default: its own default)")
    p.add_argument("--ops", type=int, default=1000)
    p.add_argument("--cloud-latency-ms", type=int, default=30)
    p.add_argument("--cloud-mbps", type=int, default=400)
    p.add_argument("--cloud-time-scale", type=float, default=0.02)
    p.add_argument("--rclone-mount-max", type=int, default=2000,
                   help="skip rclone mount above this N (it is slow)")
    p.add_argument("--no-rclone", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: checks the harness works, numbers mean little")
    p.add_argument("--quick", action="store_true",
                   help="both profiles at reduced sizes (N 250/500 x 512 KiB, 2000 x 16 KiB, "
                        "128 MiB), 3 repeats: ~10 min, to measure a change")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--docs", action="store_true",
                   help="also write results.md/.json and the plots to docs/bench/")
    args = p.parse_args()
    global DROP_CACHES
    DROP_CACHES = not args.smoke
    if args.smoke:
        args.n, args.size_kib, args.studies, args.sizes = 12, 16, 3, "6,12"
        args.cloud_sizes, args.small_n, args.small_kib = "6,12", 24, 4
        args.big_mib, args.repeat, args.ops, args.uploads = 4, 1, 10, 4
        args.big_repeat, args.cloud_time_scale = 1, 0.01

    if args.quick:
        args.n, args.sizes, args.cloud_sizes = 500, "250,500", "250,500"
        args.small_n, args.big_mib, args.big_repeat, args.ops = 2000, 128, 2, 300
        args.rclone_mount_max = 500

    build_dir = build()
    work = tempfile.mkdtemp(prefix="dicomfs-bench.")
    outdir = os.path.join(args.out, time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(outdir, exist_ok=True)
    try:
        data_root = os.path.join(work, "data")
        trees = {}
        results = {"args": vars(args), "profiles": {}}
        for profile in ("cloud", "cpu"):
            if args.profile in (profile, "both"):
                results["profiles"][profile] = run_profile(profile, args, build_dir, work,
                                                           data_root, trees)
                # Kept as soon as a profile ends: a later failure loses only its own.
                with open(os.path.join(outdir, f"partial-{profile}.json"), "w") as f:
                    json.dump(results["profiles"][profile], f, indent=1)
        ok = report(results, outdir, args)
        log(f"results in {outdir}")
        if args.docs:
            docs = os.path.join(TOP, "docs", "bench")
            os.makedirs(docs, exist_ok=True)
            for name in os.listdir(outdir):
                if name.startswith("partial-"):
                    continue
                shutil.copy(os.path.join(outdir, name), docs)
            log(f"copied to {docs}")
        return 0 if ok or args.smoke else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
