"""Shared pytest configuration for the integration tests.

Fixtures live in modules of their own so that each part of the suite owns its
file: emulator_fixture.py (a running dicomfs-emulator on a free 127.0.0.1 port)
and mount_fixture.py (a real dicomfs mount of it). Run with Debian's
/usr/bin/python3 -m pytest (tests/run.sh does).
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

pytest_plugins = [
    name
    for name in ("emulator_fixture", "mount_fixture")
    if importlib.util.find_spec(name) is not None
]
