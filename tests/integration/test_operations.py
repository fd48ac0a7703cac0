"""DATASET/operations/ID.json and STORE/operations/: the operation JSON as
the API returns it, newline-terminated, with stat sizes that match reads."""
import errno
import json
import os
import time
import uuid

import pytest


def uid(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def started_op(hc_api):
    ds = hc_api.create_dataset(uid("opds"))
    store = hc_api.create_store(ds, uid("opst"))
    op = hc_api.export_gcs(store, f"gs://staging/api-export-{uuid.uuid4().hex[:8]}")
    return ds, store, op


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_operation_shows_up(dicomfs_mount, hc_api, started_op):
    ds, _, op = started_op
    m = dicomfs_mount
    ds_id, op_id = ds.rsplit("/", 1)[1], op.rsplit("/", 1)[1]
    assert f"{op_id}.json" in os.listdir(m.path(ds_id, "operations"))
    hc_api.wait_operation(op)
    path = m.path(ds_id, "operations", f"{op_id}.json")
    data = read(path)
    assert data.endswith(b"\n")
    parsed = json.loads(data)
    assert parsed["name"] == op
    assert parsed["done"] is True
    api_raw = hc_api.get_operation_raw(op)
    want = api_raw if api_raw.endswith(b"\n") else api_raw + b"\n"
    assert data == want
    assert parsed == json.loads(api_raw)
    assert os.stat(path).st_size == len(data)
    # mtime: when the operation ended
    import calendar
    end = parsed["metadata"]["endTime"]
    want = calendar.timegm(time.strptime(end[:19], "%Y-%m-%dT%H:%M:%S"))
    assert int(os.stat(path).st_mtime) == want


def test_stat_size_matches_cat_while_running(dicomfs_mount, hc_api, started_op):
    ds, _, op = started_op
    m = dicomfs_mount
    path = m.path(ds.rsplit("/", 1)[1], "operations", op.rsplit("/", 1)[1] + ".json")
    # stat then cat agree even while the operation changes (done flips)
    for _ in range(5):
        size = os.stat(path).st_size
        data = read(path)
        assert size == len(data), (size, len(data))
        assert size == len(data) or json.loads(data)["done"], (size, len(data))
        json.loads(data)
        time.sleep(0.3)


def test_ls_l_sizes_match(dicomfs_mount, hc_api, started_op):
    ds, _, op = started_op
    hc_api.wait_operation(op)
    m = dicomfs_mount
    d = m.path(ds.rsplit("/", 1)[1], "operations")
    names = os.listdir(d)
    assert names
    for n in names:
        p = os.path.join(d, n)
        assert os.stat(p).st_size == len(read(p)), n


def test_operations_are_read_only(dicomfs_mount, started_op):
    ds, _, op = started_op
    m = dicomfs_mount
    path = m.path(ds.rsplit("/", 1)[1], "operations", op.rsplit("/", 1)[1] + ".json")
    with pytest.raises(OSError) as ei:
        open(path, "wb").close()
    assert ei.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    with pytest.raises(OSError) as ei:
        os.unlink(path)
    assert ei.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def test_unknown_operation(dicomfs_mount, started_op):
    ds, _, _ = started_op
    m = dicomfs_mount
    with pytest.raises(FileNotFoundError):
        os.stat(m.path(ds.rsplit("/", 1)[1], "operations", "999999999.json"))
    with pytest.raises(FileNotFoundError):
        os.stat(m.path(ds.rsplit("/", 1)[1], "operations", "notjson"))


def test_store_operations_lists_only_its_own(dicomfs_mount, started_op):
    # An operation started through the API (not through this store's
    # import/ or export/) is in DATASET/operations but not STORE/operations.
    ds, store, op = started_op
    m = dicomfs_mount
    ds_id, st_id = ds.rsplit("/", 1)[1], store.rsplit("/", 1)[1]
    assert os.listdir(m.path(ds_id, st_id, "operations")) == []
    with pytest.raises(FileNotFoundError):
        os.stat(m.path(ds_id, st_id, "operations", op.rsplit("/", 1)[1] + ".json"))


def hc_requests(emulator):
    return emulator.stats()["byKind"]["healthcare"]


def test_ls_l_of_many_operations_costs_one_listing(dicomfs_mount, hc_api, emulator):
    ds = hc_api.create_dataset(uid("manyops"))
    store = hc_api.create_store(ds, uid("st"))
    # 150 operation records to list: lift the emulator's cap on running
    # operations (the realistic profile has one) for this setup only.
    from test_emulator_realism import control
    limits = control(emulator, "limits", method="GET")
    control(emulator, "limits", max_running_ops=0)
    try:
        ops = [hc_api.export_gcs(store, f"gs://staging/many-{i}") for i in range(150)]
    finally:
        control(emulator, "limits", max_running_ops=limits.get("max_running_ops", 0))
    m = dicomfs_mount
    d = m.path(ds.rsplit("/", 1)[1], "operations")
    os.stat(m.path(ds.rsplit("/", 1)[1]))  # dataset lookup outside the count
    before = hc_requests(emulator)
    names = os.listdir(d)
    sizes = {n: os.stat(os.path.join(d, n)).st_size for n in names}
    after = hc_requests(emulator)
    assert all(s > 0 for s in sizes.values())
    # every operation of the dataset (the export ones and the dataset's creation)
    assert {n[:-5] for n in names} == {o["name"].rsplit("/", 1)[1]
                                       for o in hc_api.list_operations(ds)}
    assert {o.rsplit("/", 1)[1] for o in ops} <= {n[:-5] for n in names}
    # operations.list with 100 per page: 2 requests, not one get per file
    assert after - before <= 4, (before, after)


def test_store_operations_survive_remount(dicomfs_mount, hc_api, started_op):
    # The store's own operations come from the local journal, so they are
    # still listed (and readable) after an unmount and a remount.
    ds, store, _ = started_op
    m = dicomfs_mount
    ds_id, st_id = ds.rsplit("/", 1)[1], store.rsplit("/", 1)[1]
    ops_dir = m.path(ds_id, st_id, "operations")
    with open(m.path(ds_id, st_id, "export", "dicom", "everything"), "w"):
        pass  # an empty filter: export the whole store
    deadline = time.time() + 30
    while not os.listdir(ops_dir) and time.time() < deadline:
        time.sleep(0.2)
    before = sorted(os.listdir(ops_dir))
    assert len(before) == 1 and before[0].endswith(".json")
    op_name = json.loads(read(os.path.join(ops_dir, before[0])))["name"]
    hc_api.wait_operation(op_name)
    m.remount()
    assert sorted(os.listdir(ops_dir)) == before
    after = json.loads(read(os.path.join(ops_dir, before[0])))
    assert after["name"] == op_name and after["done"] is True
