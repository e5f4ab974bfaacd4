"""Writer exclusion on S3: a lease object, created only if absent and renewed by compare-and-swap.

* take: PutObject ``If-None-Match: *`` of a small JSON (owner, host, pid, ttl, a counter);
* hold: a thread rewrites it every ``ttl / 3`` with ``If-Match: <our ETag>``; a lost CAS means
  another writer took the lease over, and the holder's next commit is refused;
* wait: a second writer polls; a lease whose ETag has not changed for its ``ttl`` (timed on
  the waiter's own monotonic clock, so clock skew between machines does not matter) was left
  by a dead writer and is taken over with ``If-Match: <the ETag seen>`` (one winner);
* release: DeleteObject ``If-Match: <our ETag>``.

``LockedError`` after ``timeout`` seconds; ``None`` waits for as long as it takes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Optional

from ..errors import LockedError, StorageError
from . import _s3client as _c

log = logging.getLogger("ckpt")


class Lease:
    """The context manager :meth:`S3Storage.lock` returns."""

    def __init__(self, client: Any, bucket: str, key: str, url: str, *, ttl: float, timeout: Optional[float],
                 cas: bool, label: str = ""):
        self._client, self._bucket, self._key, self.url = client, bucket, key, url
        self.label = label or url
        self.ttl = float(ttl)
        self.timeout = timeout
        self._cas = cas
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag = ""
        self.lost = False
        self._beats = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _body(self) -> bytes:
        self._beats += 1
        return json.dumps({"ckpt_lease": 1, "owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                           "ttl": self.ttl, "beat": self._beats, "time": time.time()}).encode()

    def _call(self, doing: str, expected: Callable[[BaseException], bool], fn: Callable[..., Any],
              **kwargs: Any) -> Any:
        """``fn(**kwargs)``; None when it failed as ``expected``; a StorageError for other S3 failures."""
        try:
            return fn(Bucket=self._bucket, Key=self._key, **kwargs)
        except Exception as e:
            if _c.is_network(e) and expected(e):
                return None
            if _c.is_network(e):
                raise _c.storage_error(e, self.url, doing) from None
            raise

    def _put(self, **cond: str) -> bool:
        """One conditional write of the lease; False when the condition failed."""
        r = self._call("taking the writer lease", _c.precondition_failed, self._client.put_object,
                       Body=self._body(), ContentType="application/json", **cond)
        if r is None:
            return False
        self.etag = str(r.get("ETag", ""))
        return True

    def _current(self) -> Optional[tuple[str, dict[str, Any]]]:
        r = self._call("reading the writer lease", _c.not_found, self._client.get_object)
        if r is None:
            return None
        raw = r["Body"].read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        return str(r.get("ETag", "")), doc if isinstance(doc, dict) else {}

    def __enter__(self) -> "Lease":
        start = time.monotonic()
        seen: tuple[str, float] = ("", start)
        while True:
            if self._put(IfNoneMatch="*"):
                break
            cur = self._current()
            if cur is None:
                continue  # released between our two requests
            etag, doc = cur
            now = time.monotonic()
            if etag != seen[0]:
                seen = (etag, now)
            ttl = float(doc.get("ttl", self.ttl)) if isinstance(doc.get("ttl"), (int, float)) else self.ttl
            if now - seen[1] >= ttl:
                if self._put(IfMatch=etag):
                    log.warning("%s: took over the writer lease of %s (not renewed for %.0f s)", self.url,
                                doc.get("owner", "an unknown writer"), now - seen[1])
                    break
                continue
            if self.timeout is not None and now - start >= self.timeout:
                raise LockedError(
                    f"{self.url}: another writer ({doc.get('owner', 'unknown')}) holds the writer lease "
                    f"{self._key!r}; gave up after lock_timeout={self.timeout:g} s (a dead writer's lease is "
                    f"taken over {ttl:g} s after its last renewal)", file=self.label)
            wait = min(max(ttl / 10, 0.05), 1.0)
            if self.timeout is not None:
                wait = min(wait, max(0.01, self.timeout - (now - start)))
            time.sleep(wait)
        self._thread = threading.Thread(target=self._renew, name="ckpt-s3-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 3):
            try:
                ok = self._put(IfMatch=self.etag) if self._cas else self._put()
            except StorageError as e:
                if time.monotonic() - last_ok > self.ttl:
                    self.lost = True
                    log.error("%s: could not renew the writer lease for %.0f s (%s); saves are refused",
                              self.url, self.ttl, e)
                    return
                continue
            if not ok:
                self.lost = True
                log.error("%s: another writer took over the writer lease; this writer's saves are refused", self.url)
                return
            last_ok = time.monotonic()

    def check(self) -> None:
        """Refuse a commit once the lease is gone (taken over after a stall)."""
        if self.lost:
            raise StorageError(f"{self.url}: this writer lost its lease to another writer; nothing was committed",
                               file=self.url)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost or not self.etag:
            return
        try:
            cond = {"IfMatch": self.etag} if self._cas else {}
            self._client.delete_object(Bucket=self._bucket, Key=self._key, **cond)
        except Exception as e:  # noqa: BLE001 - an unreleased lease only delays the next writer by its ttl
            log.warning("%s: could not release the writer lease (%s); the next writer takes it over after %g s",
                        self.url, e, self.ttl)
