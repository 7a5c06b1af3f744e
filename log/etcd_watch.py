"""Following a range of etcd keys from a thread: read it all at one revision, then
watch from the next one, and read it all again whenever the watch fails. The node
registry (log/etcd_nodes.py) and the recorded settings (log/etcd_settings.py) follow
their prefixes so."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Generic, TypeVar

from .etcd_client import EtcdClient, EtcdRequestFailed, EtcdUnavailable

logger = logging.getLogger("durakv.log")

WATCH_RETRY_PAUSE_S = 0.2
State = TypeVar("State")


class PrefixWatch(Generic[State]):
    """Calls on_change(revision, state) after the first read and after every watch
    reply with events; read(client) gives (revision, state) at one revision, apply(state,
    event) folds one watch event into it. close() lets the thread end at its next
    notice: closing the stream from another thread could block on the read in progress
    (log/etcd_client.py), and the thread is a daemon."""

    def __init__(self, client: EtcdClient, start: bytes, end: bytes, name: str,
                 read: Callable[[EtcdClient], tuple[int, State]], apply: Callable[[State, dict[str, Any]], None],
                 on_change: Callable[[int, State], None]) -> None:
        self._client = client
        self._start = start
        self._end = end
        self._read = read
        self._apply = apply
        self._on_change = on_change
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                revision, state = self._read(self._client)
                self._on_change(revision, state)
                stream = self._client.watch(self._start, self._end, revision + 1)
                try:
                    for result in stream.replies():
                        events = result.get("events", [])
                        for event in events:
                            self._apply(state, event)
                        if self._closed:
                            return
                        if events:
                            revision = max(int(event["kv"].get("mod_revision", 0)) for event in events)
                            self._on_change(revision, state)
                finally:
                    stream.close()
            except (EtcdUnavailable, EtcdRequestFailed, OSError, ValueError) as e:
                if self._closed:
                    return
                logger.warning("etcd: following %s failed (%s); reading it again", self._start.decode(), e)
            if not self._closed:
                time.sleep(WATCH_RETRY_PAUSE_S)

    def close(self) -> None:
        self._closed = True
