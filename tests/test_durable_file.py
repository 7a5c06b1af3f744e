"""log/durable_file.py: the one durable file replacement (temp, fsync, rename, fsync dir)."""

import os

from durakv.log.disk import Disk, JournalingDisk, simulate_power_loss
from durakv.log.durable_file import replace_file


class ShortWriteDisk(Disk):
    """pwrite takes at most 3 bytes a call, as a write to a pipe or a full disk may."""

    def __init__(self) -> None:
        self.calls = 0

    def pwrite(self, fd, data, offset):
        self.calls += 1
        return os.pwrite(fd, bytes(data[:3]), offset)


def test_replace_file_finishes_short_writes(tmp_path):
    path = str(tmp_path / "state.json")
    disk = ShortWriteDisk()
    replace_file(path, b"0123456789" * 3, disk=disk)
    assert open(path, "rb").read() == b"0123456789" * 3
    assert disk.calls == 10
    assert not os.path.exists(path + ".tmp")


def test_replace_file_survives_power_loss_and_keeps_mode(tmp_path):
    journal = str(tmp_path / "journal.jsonl")
    disk = JournalingDisk(journal)
    path = str(tmp_path / "settings")
    replace_file(path, b"old\n", mode=0o600, disk=disk)
    replace_file(path, b"new\n", mode=0o600, disk=disk)
    disk.close()
    report = simulate_power_loss(journal)
    assert report.removed == [] and report.truncated == {}
    assert open(path, "rb").read() == b"new\n"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_processes_racing_to_create_the_topology_agree_on_one(tmp_path):
    """A router and a shard started at once (systemd) both create cluster.json:
    one creation wins, every caller gets that node id, none fails."""
    import threading

    from durakv.server.topology import ensure_topology

    for attempt in range(20):
        data_dir = str(tmp_path / f"data{attempt}")
        results: list = []
        barrier = threading.Barrier(8)

        def start(data_dir: str = data_dir, results: list = results, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                results.append(ensure_topology(data_dir, 2)["node_id"])
            except BaseException as e:  # noqa: BLE001 - reported by the assertion
                results.append(e)

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(r, str) for r in results), results
        assert len(set(results)) == 1, results
        assert os.listdir(data_dir) == ["cluster.json"]
