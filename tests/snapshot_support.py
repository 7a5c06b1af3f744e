"""Fixtures and helpers of the snapshot tests, shared through tests/conftest.py's
pytest_plugins: a moto server playing S3 (`moto_endpoint`, `s3`), the `durakv`
CLI (`cli`), and configs and data that several snapshot test files use."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import boto3
import pytest
import redis
from proctools import free_port

CLI_TIMEOUT_S = 120
SMALL_SEGMENTS = "segment-size-bytes = 4096\n"
# These tests run `durakv snapshotter --once` themselves, against S3, at chosen moments.
MANUAL_SNAPSHOTS = "snapshotter = false\n"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """A fresh bucket; the environment points boto3 (and CLI children) at moto."""
    for name, value in {"AWS_ENDPOINT_URL_S3": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3")
    bucket = f"durakv-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, f"s3://{bucket}/cluster"


def cli(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "durakv.server.cli", *argv], capture_output=True, text=True,
                         timeout=CLI_TIMEOUT_S)
    if check:
        assert out.returncode == 0, f"durakv {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def small_segment_config(tmp_path, manual: bool = True) -> tuple[str, ...]:
    """Small segments; manual: no supervised snapshotter (the test runs its own)."""
    path = tmp_path / f"small-segments{'-manual' if manual else ''}.toml"
    path.write_text(SMALL_SEGMENTS + (MANUAL_SNAPSHOTS if manual else ""))
    return ("--config", str(path))


def manual_config(tmp_path) -> tuple[str, ...]:
    path = tmp_path / "manual.toml"
    path.write_text(MANUAL_SNAPSHOTS)
    return ("--config", str(path))


def write_every_type(client: redis.Redis, tag: str, n: int = 40) -> None:
    future_ms = (int(time.time()) + 3600) * 1000
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"{tag}:s{i}", f"value-{i}" * (1 + i % 5))
        pipe.set(f"{tag}:n{i}", i * 1000)
    pipe.set(f"{tag}:ttl", "x", pxat=future_ms)
    pipe.rpush(f"{tag}:list", *[f"e{i}" for i in range(300)], 42, "y" * 9000)
    pipe.hset(f"{tag}:hash", mapping={"a": "1", "b": "2"})
    pipe.hset(f"{tag}:bighash", mapping={f"f{i}": i for i in range(600)})
    pipe.sadd(f"{tag}:intset", 1, 5, -9, 2**40)
    pipe.sadd(f"{tag}:set", "a", "b", "c")
    pipe.zadd(f"{tag}:zset", {"a": 1, "b": 2.25, "c": float("-inf")})
    pipe.zadd(f"{tag}:bigzset", {f"m{i}": i / 3 for i in range(200)})
    pipe.pexpireat(f"{tag}:bigzset", future_ms + 7)
    pipe.pexpireat(f"{tag}:list", future_ms + 8)
    pipe.incrbyfloat(f"{tag}:float", 1.5)
    pipe.pfadd(f"{tag}:hll", "a", "b", "c")
    pipe.execute()
