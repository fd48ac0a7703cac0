"""Suite 1, faults: imports, exports and operation reads while the emulator
answers 20% of requests with 429/500/503, resets 5% of connections and adds
latency (seeded, so a failure can be replayed with DICOMFS_SEED=N).

Checks real outcomes only: cp's exit status, `dicomfs wait`'s exit status,
and what the store holds according to QIDO-RS asked directly of the emulator
(every SOP Instance UID exactly once). The long variant
(tests/integration/long/, DICOMFS_LONG=1) runs the same code with more files.
"""
import json
import os
import time

import resilience_util as ru
from resilience_util import res_mounts  # noqa: F401  (fixture)

SEED = int(os.environ.get("DICOMFS_SEED", "7"))
FAULT_ARGS = ["--fail-rate", "0.2", "--reset-rate", "0.05", "--latency-ms", "20"]


def read_json_file(path):
    with open(path, "rb") as f:
        data = f.read()
    return json.loads(data)


def gcs_list(emu, bucket, prefix):
    """Object names under prefix, read straight from the emulator's Cloud
    Storage JSON API (paged), retrying faulted pages."""
    q = "prefix=" + ru.urllib.parse.quote(prefix, safe="")
    return ru.paged_names(emu, "/storage/v1/b/%s/o?%s" % (bucket, q), "items", "GCS list")


def run_import_under_faults(emulator_factory, res_mounts, tmp_path, n_files, studies,  # noqa: F811
                            record_property=None, suite="faults", export_check=True):
    emu = emulator_factory(*(FAULT_ARGS + ["--seed", str(SEED)]))
    src = str(tmp_path / "src")
    files = ru.make_tree(src, n_files, studies=studies, series_per_study=3)
    assert len(set(files.values())) == n_files

    # The mount's own checks try only twice (a wrong option must fail fast),
    # so at a 25% fault rate a mount can fail: mount again, as a user would,
    # and report how many tries it took.
    m = res_mounts(emu, start=False, commit_delay=1)
    mount_tries, why = 0, ""
    for mount_tries in range(1, 6):
        ok, why = m.try_start()
        if ok:
            break
    assert ok, "no mount in 5 tries under faults:\n" + why
    t0 = time.monotonic()
    rc, err = ru.cp_r(src, m.import_dir)
    t_cp = time.monotonic() - t0
    assert rc == 0, "cp -r into import/ failed under faults: %s\n%s" % (err, m.log_tail())

    wrc, wout = m.wait(timeout=300)
    t_wait = time.monotonic() - t0
    counts, failed = m.status()
    stats_import = ru.fault_totals(emu.stats())
    found = ru.try_check_exactly_once(emu, list(files.values()))
    figures = dict(files=n_files, studies=studies, cp_seconds=round(t_cp, 1),
                   imported_seconds=round(t_wait, 1), files_lost=ru.n_or_none(found["missing"]),
                   duplicates=ru.n_or_none(found["duplicates"]),
                   stray=ru.n_or_none(found["stray"]), seed=SEED, mount_tries=mount_tries,
                   faults_during_import=stats_import)
    if wrc != 0 or "error" in found or found["missing"]:
        ru.record_figures(suite, record_property, **figures)
    assert wrc == 0, "dicomfs wait exited %r\n%s\nstatus=%r %r\nlog:\n%s" % (
        wrc, wout[-2000:], counts, failed, m.log_tail())
    assert not failed, failed
    ru.assert_store_ok(found, "copied")
    # Every file accepted stays listed once imported (remembered), as imported.
    assert ru.count_files(m.import_dir) == n_files, sorted(os.listdir(m.import_dir))[:10]
    sample = sorted(files)[:: max(1, n_files // 20)]
    states = {r: ru.file_state(os.path.join(m.import_dir, r)) for r in sample}
    assert set(states.values()) == {"imported"}, states

    if export_check:
        figures.update(run_export_under_faults(emu, m, files))
    figures["faults_total"] = ru.fault_totals(emu.stats())
    ru.record_figures(suite, record_property, **figures)
    if export_check:
        bad = {k: v for k, v in figures["exports"].items() if v != "ok"}
        assert bad == {}, "exports under faults: %r" % bad
    assert figures["faults_total"]["http429"] + figures["faults_total"]["http500"] + \
        figures["faults_total"]["http503"] > 0, "the emulator injected no faults: %r" % figures
    return figures


def export_selections(files):
    """Three filters from the source tree: two whole studies, one series, one
    instance; each with the SOP Instance UIDs it selects."""
    study_uids = sorted(set(files.study.values()))[:2]
    rel0 = next(iter(files))
    series = files.series[rel0]
    return [
        ("studies", "".join("/studies/%s\n" % u for u in study_uids),
         {sop for rel, sop in files.items() if files.study[rel] in study_uids}),
        ("series", "/studies/%s/series/%s\n" % (files.study[rel0], series),
         {sop for rel, sop in files.items() if files.series[rel] == series}),
        ("instance", "/studies/%s/series/%s/instances/%s\n" % (files.study[rel0], series,
                                                               files[rel0]),
         {files[rel0]}),
    ]


def run_export_under_faults(emu, m, files):
    """For each selection: writes the filter into export/dicom/NAME (close()
    must succeed), follows the new operation through STORE/operations/ID.json
    (every read must succeed) until done without error, and compares the
    exported objects in the bucket with the instances the filter selects."""
    ops_dir = os.path.join(m.store_dir, "operations")
    results = {}
    reads = 0
    stamp = int(time.time())
    for kind, filt, wanted in export_selections(files):
        name = "faults-%s-%d" % (kind, stamp)
        before = set(os.listdir(ops_dir))
        e = ru.write_file(os.path.join(m.store_dir, "export", "dicom", name), filt.encode())
        if e is not None:
            results[kind] = "close() failed: %s; log: %s" % (ru.errno_name(e), "\n".join(
                ln for ln in m.log().splitlines() if "export/dicom/" + name in ln)[-600:])
            continue
        if not ru.wait_until(lambda: len(set(os.listdir(ops_dir)) - before) > 0, 60):
            results[kind] = "no operation appeared in STORE/operations/"
            continue
        new = sorted(set(os.listdir(ops_dir)) - before)
        ops = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ops = [read_json_file(os.path.join(ops_dir, fn)) for fn in new]  # must not raise
            reads += len(new)
            if all(o.get("done") for o in ops):
                break
            time.sleep(0.5)
        if not all(o.get("done") for o in ops) or any("error" in o for o in ops):
            results[kind] = "operation not done or failed: %r" % ops
            continue
        exported = set()
        for o in gcs_list(emu, ru.BUCKET, ""):
            if "/dicom/%s/" % name in o and o.endswith(".dcm"):
                exported.add(o.rsplit("/", 1)[1][:-len(".dcm")])
        results[kind] = "ok" if exported == wanted else \
            "exported %d instances, the filter selects %d" % (len(exported), len(wanted))

    # Dataset-level operations/ too: list and read every ID.json.
    ds_ops = os.path.join(m.dataset_dir, "operations")
    for fn in os.listdir(ds_ops):
        doc = read_json_file(os.path.join(ds_ops, fn))
        assert doc.get("name", "").endswith("/" + fn[:-len(".json")]), (fn, doc)
        reads += 1
    return dict(exports=results, operation_reads=reads)


def test_import_and_export_under_faults(emulator_factory, res_mounts, tmp_path):
    run_import_under_faults(emulator_factory, res_mounts, tmp_path, n_files=300, studies=5,
                            record_property=None)


def http_faults(emu):
    """Requests the emulator answered with an injected error status."""
    t = ru.fault_totals(emu.stats())
    return t["http429"] + t["http500"] + t["http503"]


def import_with_failing_batches(emulator_factory, res_mounts, tmp_path, n_files,  # noqa: F811
                                series_per_study, fail_status=None):
    """An emulator failing every batch request (503, or fail_status), n_files
    copied into import/ and imported (dicomfs wait): returns (emu, files)."""
    emu = emulator_factory("--fail-rate", "1", "--fault-paths", "/batch/")
    if fail_status is not None:
        code, _, body = emu.request("POST", "/_emulator/faults?fail_status=%d" % fail_status,
                                    auth=False)
        assert code == 200, body
    src = str(tmp_path / "src")
    files = ru.make_tree(src, n_files, studies=1, series_per_study=series_per_study)
    m = res_mounts(emu, commit_delay=1)
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err
    wrc, wout = m.wait(timeout=120)
    assert wrc == 0, (wout[-2000:], m.log_tail())
    return emu, files


def test_staged_deletes_fall_back_when_batches_fail(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    # Every batch request fails, with 404 as from a server without the batch
    # endpoint (not retried, so the test stays short): the staged objects of
    # an import still go, one DELETE each, and the import is unaffected.
    emu, files = import_with_failing_batches(emulator_factory, res_mounts, tmp_path, 6, 2,
                                             fail_status=404)
    ru.assert_store_ok(ru.try_check_exactly_once(emu, list(files.values())), "copied")
    assert ru.wait_until(lambda: gcs_list(emu, "staging", "") == [], 60, 0.2)
    stats = emu.stats()
    assert stats["gcs"]["batchRequests"] == 0, stats  # every one was refused by the fault
    assert http_faults(emu) > 0, stats
    assert stats["gcs"]["objectDeletes"] >= len(files), stats


def test_staged_deletes_wait_out_a_failing_batch_endpoint(emulator_factory, res_mounts,  # noqa: F811
                                                          tmp_path):
    # Batch requests fail transiently (503): no fallback to single deletes
    # (they would fail the same way), the objects stay staged and go in a
    # later batch once the service is back.
    emu, files = import_with_failing_batches(emulator_factory, res_mounts, tmp_path, 4, 1)
    # One batch, all its attempts (4) refused.
    assert ru.wait_until(lambda: http_faults(emu) >= 4, 30, 0.2)
    assert len(gcs_list(emu, "staging", "")) == len(files)
    code, _, body = emu.request("POST", "/_emulator/faults?fail_rate=0", auth=False)
    assert code == 200, body
    assert ru.wait_until(lambda: gcs_list(emu, "staging", "") == [], 60, 0.2)
    stats = emu.stats()["gcs"]
    assert stats["objectDeletes"] == 0 and stats["batchCalls"] == len(files), stats
