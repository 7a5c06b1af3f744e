"""A synchronous etcd v3 client over several endpoints, for the log on etcd.

Built on etcd3gw (OpenStack's maintained client of etcd's v3 JSON gateway; plain
HTTP with requests, no gRPC or protobuf to keep in step with Python): it gives one
member's session, TLS settings and error mapping. What it lacks for a log is
failover, so this module keeps one etcd3gw client per endpoint and moves to the
next member when one is down, slow or has no leader, until `retry_s` has passed.

Why synchronous: the log is driven from a shard's commit thread, which blocks on
one transaction at a time anyway (one in flight per shard keeps records in order).

Retried requests may have been applied once already (a reply lost with a member):
callers make their requests safe to repeat (the log's fenced transactions compare
the next sequence key absent, and tell their own earlier write apart)."""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors

from .errors import DefragmentTooLate, EtcdRequestFailed, EtcdUnavailable, LogError

logger = logging.getLogger("durakv.log")

DEFAULT_REQUEST_TIMEOUT_S = 2.0
DEFAULT_RETRY_S = 10.0
RETRY_PAUSE_S = 0.05
MAX_ENDPOINTS = 16
_TOKEN_EXPIRED = "invalid auth token"
_PERMISSION_DENIED = "permission denied"
# etcd answers these while it elects a leader or cannot reach a quorum: worth another member.
_TRANSIENT = (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
              etcd_errors.InternalServerError)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class EtcdClient:
    """Requests to an etcd cluster through whichever of `endpoints` answers.
    Thread-safe: each call picks the current endpoint; a failure moves everyone on."""

    def __init__(self, endpoints: Sequence[str], *, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 retry_s: float = DEFAULT_RETRY_S, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, user: str = "", password: str = "") -> None:
        """user/password: etcd's authentication (a token per member, fetched when first
        needed and again when etcd says it is no longer valid)."""
        if not endpoints or len(endpoints) > MAX_ENDPOINTS:
            raise ValueError(f"etcd endpoints: give 1..{MAX_ENDPOINTS}, got {len(endpoints)}")
        self.endpoints = list(endpoints)
        self.request_timeout_s = request_timeout_s
        self.retry_s = retry_s
        self._tls = (ca_file, cert_file, key_file)
        self._auth = (user, password)
        self._clients = [self._member_client(e, ca_file, cert_file, key_file) for e in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()

    def clone(self) -> "EtcdClient":
        """A client with the same settings and its own HTTP sessions, for another thread
        (a requests.Session is not documented as thread-safe)."""
        ca_file, cert_file, key_file = self._tls
        return EtcdClient(self.endpoints, request_timeout_s=self.request_timeout_s, retry_s=self.retry_s,
                          ca_file=ca_file, cert_file=cert_file, key_file=key_file, user=self._auth[0],
                          password=self._auth[1])

    def _member_client(self, endpoint: str, ca_file: str | None, cert_file: str | None,
                       key_file: str | None) -> etcd3gw.Etcd3Client:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ValueError(f"etcd endpoint {endpoint!r}: expected http(s)://HOST:PORT")
        client = etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port, protocol=parts.scheme,
                                     ca_cert=ca_file, cert_cert=cert_file, cert_key=key_file,
                                     timeout=self.request_timeout_s, api_path="/v3/")
        # Straight to the member, with exactly the CA configured: with trust_env, requests lets
        # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override the session's CA, and *_PROXY reroute.
        client.session.trust_env = False
        return client

    def call(self, path: str, body: dict[str, Any], retry_s: float | None = None) -> dict[str, Any]:
        """POST body to /v3/<path> on the current member, moving on to the next while
        members fail, for at most retry_s (the client's retry_s by default)."""
        deadline = time.monotonic() + (self.retry_s if retry_s is None else retry_s)
        tried = 0
        renewed_token = False
        while True:
            with self._lock:
                index = self._current
            client = self._clients[index]
            try:
                if self._auth[0] and "Authorization" not in client.session.headers:
                    self._authenticate(client)
                return client.post(client.get_url(path), json=body)
            except _TRANSIENT as e:
                error: Exception = e
            except etcd_errors.Etcd3Exception as e:
                detail = _detail(e)
                if self._auth[0] and _TOKEN_EXPIRED in detail and not renewed_token:
                    client.session.headers.pop("Authorization", None)  # fetch a new token, then again
                    renewed_token = True
                    continue
                raise EtcdRequestFailed(f"etcd {self.endpoints[index]} refused {path}: {detail}") from e
            except (requests.RequestException, ValueError) as e:  # a reply cut short or not JSON
                error = e
            tried += 1
            with self._lock:
                if self._current == index:
                    self._current = (index + 1) % len(self._clients)
            if time.monotonic() >= deadline:
                raise EtcdUnavailable(f"etcd unavailable: {tried} attempts on {', '.join(self.endpoints)} "
                                      f"failed; last from {self.endpoints[index]}: "
                                      f"{type(error).__name__}: {_detail(error)}") from error
            if tried % len(self._clients) == 0:
                time.sleep(RETRY_PAUSE_S)

    @property
    def current_endpoint(self) -> str:
        """The member requests go to now (the last that answered)."""
        return self.endpoints[self._current]

    def _authenticate(self, client: etcd3gw.Etcd3Client) -> None:
        user, password = self._auth
        try:
            reply = client.post(client.get_url("auth/authenticate"), json={"name": user, "password": password})
        except etcd_errors.Etcd3Exception as e:
            if isinstance(e, _TRANSIENT):
                raise
            raise EtcdRequestFailed(f"etcd refused user {user!r}: {_detail(e)}; check etcd-user and "
                                    "etcd-password") from e
        client.session.headers["Authorization"] = reply["token"]

    # ---- the operations the log uses ----

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict]) -> dict[str, Any]:
        return self.call("kv/txn", {"compare": compare, "success": success, "failure": failure})

    def range(self, key: bytes, range_end: bytes | None = None, *, limit: int = 0, revision: int = 0,
              keys_only: bool = False, descend: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if limit:
            body["limit"] = limit
        if revision:
            body["revision"] = revision
        if keys_only:
            body["keys_only"] = True
        if descend:
            body["sort_order"], body["sort_target"] = "DESCEND", "KEY"
        return self.call("kv/range", body)

    def lease_grant(self, ttl_s: int) -> int:
        reply = self.call("lease/grant", {"TTL": ttl_s})
        if reply.get("error"):
            raise EtcdRequestFailed(f"etcd lease grant failed: {reply['error']}")
        return int(reply["ID"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease; its new TTL in seconds, 0 or less once it expired (etcd
        answers an expired lease's renewal with no TTL rather than an error)."""
        reply = self.call("lease/keepalive", {"ID": lease_id}, retry_s=self.request_timeout_s)
        return int(reply.get("result", {}).get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        self.call("kv/lease/revoke", {"ID": lease_id}, retry_s=self.request_timeout_s)

    def compact(self, revision: int) -> None:
        try:
            self.call("kv/compaction", {"revision": revision, "physical": False})
        except EtcdRequestFailed as e:
            if "compacted" not in str(e):  # another shard compacted past it already
                raise

    def status(self, endpoint_index: int) -> dict[str, Any]:
        """One member's status (no failover): whether that member answers."""
        client = self._clients[endpoint_index]
        try:
            return client.post(client.get_url("maintenance/status"), json={})
        except (etcd_errors.Etcd3Exception, requests.RequestException) as e:
            raise EtcdUnavailable(f"etcd {self.endpoints[endpoint_index]}: {_detail(e)}") from e

    def defragment(self, endpoint_index: int, timeout_s: float, not_after: float = math.inf) -> None:
        """Defragment one member's database file (no failover: it is that member's
        file); it answers nothing else until done, which may take timeout_s. not_after:
        the monotonic time past which the request must not leave (the caller's right to
        defragment may have lapsed): checked immediately before it is sent, as etcd
        cannot fence a defragmentation. Raises DefragmentTooLate then."""
        client = self._clients[endpoint_index]
        endpoint = self.endpoints[endpoint_index]
        for attempt in range(2):
            try:
                if self._auth[0] and "Authorization" not in client.session.headers:
                    self._authenticate(client)
                late_s = time.monotonic() - not_after
                if late_s >= 0:
                    raise DefragmentTooLate(f"etcd {endpoint}: defragment not sent: {late_s:.3f} s past the "
                                            "moment the right to defragment was sure to last")
                resp = client.session.post(client.get_url("maintenance/defragment"), json={}, timeout=timeout_s)
            except (etcd_errors.Etcd3Exception, requests.RequestException) as e:
                raise EtcdUnavailable(f"etcd {endpoint}: defragment: {_detail(e)}") from e
            if resp.status_code == 200:
                return
            if self._auth[0] and _TOKEN_EXPIRED in resp.text and attempt == 0:
                # This member's token (from the round before, maybe hours ago) expired.
                client.session.headers.pop("Authorization", None)
                continue
            if _PERMISSION_DENIED in resp.text:
                raise EtcdRequestFailed(f"etcd {endpoint} refused defragment to user {self._auth[0]!r}: it needs "
                                        "etcd's root role (etcdctl user grant-role USER root), or defragment "
                                        "with etcdctl defrag")
            break
        raise EtcdRequestFailed(f"etcd {endpoint} refused defragment: {resp.status_code} {resp.text[:200]}")

    def member_reads(self, endpoint_index: int, timeout_s: float) -> bool:
        """Whether one member serves a read from its own database within timeout_s (a
        serializable count of nothing: no quorum involved). A member being defragmented
        holds its database and serves no read until done, although its status answers;
        so does one that is down or stuck."""
        client = self._clients[endpoint_index]
        body: dict[str, Any] = {"key": b64(b"\0"), "serializable": True, "count_only": True}
        for attempt in range(2):
            try:
                if self._auth[0] and "Authorization" not in client.session.headers:
                    self._authenticate(client)
                resp = client.session.post(client.get_url("kv/range"), json=body, timeout=timeout_s)
            except (etcd_errors.Etcd3Exception, requests.RequestException, LogError) as e:
                logger.info("etcd %s: no read within %.1f s: %s", self.endpoints[endpoint_index], timeout_s,
                            _detail(e))
                return False
            if resp.status_code == 200:
                return True
            if self._auth[0] and _TOKEN_EXPIRED in resp.text and attempt == 0:
                client.session.headers.pop("Authorization", None)
                continue
            logger.warning("etcd %s: refused a read: %s %s", self.endpoints[endpoint_index], resp.status_code,
                           resp.text[:200])
            break
        return False

    def watch(self, key: bytes, range_end: bytes, start_revision: int,
              read_timeout_s: float | None = None) -> "WatchStream":
        """Events on [key, range_end) from start_revision, from the current member. With
        read_timeout_s, reading the stream raises requests' ConnectionError after that
        long without a reply."""
        with self._lock:
            index = self._current
        client = self._clients[index]
        body: dict[str, Any] = {"create_request": {"key": b64(key), "range_end": b64(range_end),
                                   "start_revision": start_revision}}
        try:
            resp = client.session.post(client.get_url("watch"), json=body, stream=True,
                                       timeout=(self.request_timeout_s, read_timeout_s))
        except requests.RequestException as e:
            with self._lock:
                if self._current == index:
                    self._current = (index + 1) % len(self._clients)
            raise EtcdUnavailable(f"etcd {self.endpoints[index]}: watch failed: {e}") from e
        if resp.status_code != 200:
            resp.close()
            raise EtcdRequestFailed(f"etcd {self.endpoints[index]}: watch refused: {resp.status_code} "
                                    f"{resp.text[:200]}")
        return WatchStream(resp)


class WatchStream:
    """One watch's replies, as etcd streams them (one JSON object per line)."""

    def __init__(self, resp: requests.Response) -> None:
        self._resp = resp

    def replies(self) -> Iterator[dict[str, Any]]:
        buffered = b""
        for chunk in self._resp.iter_content(chunk_size=None):
            *lines, buffered = (buffered + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    reply = json.loads(line)
                    if "error" in reply:
                        raise EtcdUnavailable(f"etcd watch ended: {reply['error']}")
                    yield reply["result"]

    def close(self) -> None:
        """Ends the stream; a thread blocked in replies() sees it end."""
        self._resp.close()


def _detail(error: BaseException) -> str:
    detail = getattr(error, "detail_text", None) or str(error)
    return " ".join(str(detail).split())[:300]
