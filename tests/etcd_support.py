"""The etcd cluster fixture (scripts/etcd_cluster.py: N members on loopback).

Tests that need etcd get `etcd_cluster` (one per test module; tests use their own
key prefixes) or call `etcd_binary_or_skip()`: it skips with a reason naming etcd
when the binary is absent, and fails instead under DURAKV_REQUIRE_ETCD=1 (set by
.ci/run, which installs etcd-server), as DURAKV_REQUIRE_REDIS does for the redis tools."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from etcd_cluster import EtcdCluster

REQUIRE_ETCD_ENV = "DURAKV_REQUIRE_ETCD"


def etcd_binary_or_skip() -> str:
    path = shutil.which("etcd")
    if path is None:
        if os.environ.get(REQUIRE_ETCD_ENV) == "1":
            pytest.fail(f"etcd is not installed, but {REQUIRE_ETCD_ENV}=1 says it is "
                        "(apt-get install etcd-server)")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    return path


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory):
    """One cluster per test module; a test that kills a member starts it again."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), binary=etcd_binary_or_skip()).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def until(fn, what: str, timeout_s: float):
    """fn() until it returns something true; that value (AssertionError naming `what` past timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
