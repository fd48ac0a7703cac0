import sys, os, time, subprocess, tempfile, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B
B.DROP_CACHES = True
bd = os.environ.get("BD", "/work/main/build-release")
work = tempfile.mkdtemp(prefix="bigexp.")
emu = B.Emulator(bd, work)
m = B.Mount(bd, emu, work, 16)
mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
try:
    big = os.path.join(work, "big.dcm")
    B.make_dicom(big, "1.2.3.999", "1.2.3.999.1", "1.2.3.999.1.1", mib << 20)
    os.mkdir(m.store_dir("s0"))
    if os.environ.get("RAW_FIRST"):
        t0 = time.monotonic()
        B.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/dicom", "-T", big,
               f"{emu.url}/upload/storage/v1/b/{B.BUCKET}/o?uploadType=media&name=bigwarm%2Fbig.dcm"])
        emu.create_store("warm")
        op = emu.import_and_wait(f"{B.DATASET_NAME}/dicomStores/warm", f"gs://{B.BUCKET}/bigwarm/**")
        md = op.get("metadata", {})
        print("warm-up raw total", round(time.monotonic()-t0,2), "op", md.get("createTime"), md.get("endTime"))
    B.drop_caches()
    import threading, glob
    def cpu(pid):
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    samples = []
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            sz = sum(os.path.getsize(p) for p in glob.glob(os.path.join(emu.data, "gcs", "uploads", "*.part")))
            samples.append((time.monotonic(), sz))
            time.sleep(0.05)
    th = threading.Thread(target=sample); th.start()
    t0 = time.monotonic()
    B.run(["cp", big, os.path.join(m.store_dir("s0"), "import", "big.dcm")])
    t1 = time.monotonic(); print("cp", round(t1-t0,2), flush=True)
    st = os.path.join(m.store_dir("s0"), "status")
    last = None
    while True:
        s = open(st).read()
        up = [l for l in s.splitlines() if l.startswith(("uploaded", "importing", "imported", "uploading"))]
        if up != last:
            print(round(time.monotonic()-t0,2), up, "cpu dicomfs %.2f emu %.2f" % (cpu(m.proc.pid), cpu(emu.proc.pid)), flush=True); last = up
        if any(l.startswith("imported: 1") for l in up): break
        time.sleep(0.05)
    print("fs total", round(time.monotonic()-t0,2))
    stop.set(); th.join()
    for op in emu.api("GET", f"/v1/{B.DATASET_NAME}/operations").get("operations", []):
        md = op.get("metadata", {})
        print("  op", md.get("createTime"), md.get("endTime"))
    last = -1
    for t, sz in samples:
        if sz != last:
            print("  emulator has %.0f MiB at %.2f" % (sz / 2**20, t - t0)); last = sz
    m.log.flush(); print("".join(l for l in open(m.log.name) if "stream" in l or "batch" in l), end="")
    B.drop_caches()
    t0 = time.monotonic()
    B.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/dicom", "-T", big,
           f"{emu.url}/upload/storage/v1/b/{B.BUCKET}/o?uploadType=media&name=bigraw%2Fbig.dcm"])
    t1 = time.monotonic(); print("curl", round(t1-t0,2), "emu cpu %.2f" % cpu(emu.proc.pid))
    emu.create_store("raw")
    op = emu.import_and_wait(f"{B.DATASET_NAME}/dicomStores/raw", f"gs://{B.BUCKET}/bigraw/**")
    print("raw total", round(time.monotonic()-t0,2), "emu cpu %.2f" % cpu(emu.proc.pid))
    md = op.get("metadata", {})
    print("  raw op", md.get("createTime"), md.get("endTime"))
finally:
    m.stop(); emu.stop(); shutil.rmtree(work, ignore_errors=True)
