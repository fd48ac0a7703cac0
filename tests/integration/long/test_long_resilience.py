"""Long variants (DICOMFS_LONG=1): the same code as the short suites with
more files, more kills and a longer token run. Sizes can be raised further
with DICOMFS_LONG_FILES (default 3000) and DICOMFS_LONG_KILLS (default 30).
"""
import os

import test_badinput
import test_crash
import test_faults
import test_nohang
import test_restart
from resilience_util import res_mounts  # noqa: F401  (fixture)

FILES = int(os.environ.get("DICOMFS_LONG_FILES", "3000"))
KILLS = int(os.environ.get("DICOMFS_LONG_KILLS", "30"))


def test_long_import_and_export_under_faults(emulator_factory, res_mounts, tmp_path):
    test_faults.run_import_under_faults(emulator_factory, res_mounts, tmp_path, n_files=FILES,
                                        studies=20, record_property=None,
                                        suite="long-faults")


def test_long_kill_during_cp(emulator, res_mounts, tmp_path):  # noqa: F811
    test_crash.run_kill_during_cp(emulator, res_mounts, tmp_path, FILES, None)


def test_long_kill_loop(emulator, res_mounts, tmp_path):  # noqa: F811
    test_crash.run_kill_loop(emulator, res_mounts, tmp_path, rounds=KILLS, per_round=60,
                             record_property=None)


def test_long_short_tokens(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    test_restart.run_short_tokens(emulator_factory, res_mounts, tmp_path, 60, None)


def test_long_bad_filters(emulator, res_mounts):  # noqa: F811
    # Every bad filter also with CRLF line ends and repeated after 10,000 valid lines.
    extra = []
    for label, data in test_badinput.BAD_FILTERS:
        extra.append((label + " (CRLF)", data.replace(b"\n", b"\r\n")))
        extra.append((label + " (after 10k lines)",
                      b"/studies/1.2.3\n" * 10000 + data))
    test_badinput.run_bad_filters(emulator, res_mounts, None, extra_cases=extra)


def test_long_soak(emulator_factory, res_mounts, tmp_path):  # noqa: F811
    """30 minutes (DICOMFS_LONG_SOAK_MINUTES) of rounds of faults, kills,
    emulator restarts and credential outages (test_nohang.run_soak)."""
    minutes = float(os.environ.get("DICOMFS_LONG_SOAK_MINUTES", "30"))
    test_nohang.run_soak(emulator_factory, res_mounts, tmp_path, minutes, 60, "soak-long")
