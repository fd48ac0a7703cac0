"""`dicomfs wait` progress without a terminal: a plain line every 5 s with
the upload rate and, while bytes remain to upload, the time left at that
rate (README: "dicomfs wait"). The emulator's shared bandwidth cap makes
the upload last long enough for a line with an estimate to appear.

Every call into the mount goes through a subprocess with a timeout or a
helper of resilience_util that has one.
"""
import os
import re

import resilience_util as ru
from resilience_util import res_mounts  # noqa: F401  (fixture)

LINE = re.compile(r"^(\d+)/(\d+) imported, (\d+) failed, .*?, ([0-9.]+) MB/s"
                  r"(?:, ([0-9.]+) (s|min|h) left)?$")


def test_wait_shows_rate_and_time_left_while_uploading(emulator_factory, res_mounts,  # noqa: F811
                                                      tmp_path):
    """16 files of 256 KiB (4 MiB) uploaded one at a time over a 4 Mbit/s
    wire take about 8 s: the line printed at 5 s shows a non-zero rate and a
    time left that fits what remains; the last line says all imported."""
    emu = emulator_factory("--bandwidth-mbps", "4")
    src = str(tmp_path / "src")
    files = ru.make_tree(src, 16, studies=1, rows=512, cols=512)
    total = sum(os.path.getsize(os.path.join(src, r)) for r in files)
    assert total >= 4 << 20
    m = res_mounts(emu, commit_delay=0.2, uploads=1)
    rc, err = ru.cp_r(src, m.import_dir)
    assert rc == 0, err
    rc, out = m.wait(timeout=120)
    assert rc == 0, "dicomfs wait exited %r\n%s\nlog:\n%s" % (rc, out, m.log_tail(40))
    lines = [LINE.match(x) for x in out.splitlines()]
    lines = [x for x in lines if x]
    assert len(lines) >= 2, out
    estimates = [x for x in lines[:-1] if x.group(5)]
    assert estimates, "no line with a time left while uploading:\n" + out
    first = estimates[0]
    rate = float(first.group(4))
    assert 0.1 <= rate <= 2.0, "rate %s MB/s on a 0.5 MB/s wire\n%s" % (rate, out)
    left_s = float(first.group(5)) * {"s": 1, "min": 60, "h": 3600}[first.group(6)]
    assert left_s <= 60, "time left %s s for at most 4 MiB at %s MB/s\n%s" % (left_s, rate, out)
    last = lines[-1]
    assert last.group(1) == last.group(2) == "16" and last.group(3) == "0", out
    assert last.group(5) is None, "the final line still shows a time left:\n" + out
    ru.assert_store_ok(ru.check_exactly_once(emu, list(files.values())))
