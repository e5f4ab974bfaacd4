"""The S3 backend: checkpoints in a bucket, committed whole and read in few requests.

What "committed" means here: an object is committed when PutObject or
CompleteMultipartUpload returns. S3 never shows a partial object or an uncompleted upload, so
a writer killed at any point leaves nothing visible (its parts are aborted later by
:meth:`S3Storage.cleanup`). ``exclusive`` commits carry ``If-None-Match: *``: a second writer
of the same key gets :class:`~ckpt.errors.ObjectExistsError`, never an overwrite. Writers are
excluded by a lease object (:mod:`._s3lease`). A store that ignores conditional requests is
detected once per bucket by a probe and then served with a check-then-write fallback (racy, so
a :class:`~ckpt.errors.StorageWarning` says so, once).

Options (``storage_options``) follow s3fs (``key``, ``secret``, ``token``, ``endpoint_url``,
``client_kwargs``, ``config_kwargs``, ``profile``, ``anon``) plus ckpt's own, listed in
:class:`._s3client.Settings`. The usual AWS environment variables apply, including
``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar, cast

from ..errors import ObjectExistsError, SaveError, StorageError, StorageWarning
from . import _s3client as _c
from ._s3lease import Lease
from ._s3read import RangeFile
from ._s3write import UploadWriter
from .base import ObjectInfo, Storage

log = logging.getLogger("ckpt")
T = TypeVar("T")

#: DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000
#: Ranges of one object closer than this are fetched by one GET (read_ranges).
_COALESCE_GAP = 1 << 20

# (endpoint, bucket) -> whether the store honours If-None-Match / If-Match; probed once per process
_conditional: dict[tuple[str, str], bool] = {}
_conditional_lock = threading.Lock()


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``, refusing what is not an S3 URL."""
    if not url.startswith(("s3://", "s3a://")):
        raise ValueError(f"{url!r} is not an s3:// URL")
    rest = url.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"storage key {key!r} must be a relative, '/'-separated name without '.', '..' or "
                         "empty parts")
    return key


class S3Storage(Storage):
    """One ``s3://bucket/prefix`` root (see the module docstring for its guarantees)."""

    create_only_steps = True  # a second writer of a step gets ObjectExistsError, never an overwrite

    def __init__(self, url: str, storage_options: Optional[Mapping[str, Any]] = None, *,
                 _shared: Optional["S3Storage"] = None):
        self.bucket, self.prefix = split_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client: Any
        self.settings: _c.Settings
        self._pool: ThreadPoolExecutor
        self._leases: list[Lease]
        self._made: set[str]
        if _shared is not None:
            self.client, self.settings, self._pool = _shared.client, _shared.settings, _shared._pool
            self._leases = _shared._leases
            self._made = _shared._made
        else:
            self.client, self.settings = _c.make_client(storage_options or {})
            workers = 2 + self.settings.parts_in_flight + self.settings.readahead * 2
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckpt-s3")
            self._leases = []
            self._made = set()
        self.endpoint = str(self.client.meta.endpoint_url)

    # -- naming ------------------------------------------------------------
    def _abs(self, key: str) -> str:
        return f"{self.prefix}/{_check_key(key)}" if self.prefix else _check_key(key)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _url(self, key: str) -> str:
        return f"{self.url}/{key}"

    def child(self, prefix: str) -> "S3Storage":
        return S3Storage(self._url(_check_key(prefix.strip("/"))), _shared=self)

    def _fail(self, e: BaseException, doing: str, key: str = "") -> BaseException:
        """Our error for a botocore failure (anything else is re-raised as it is)."""
        if not _c.is_network(e):
            return e
        return _c.storage_error(e, self._url(key) if key else self.url, doing, self.endpoint)

    # -- reading -----------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        try:
            return cast(BinaryIO, RangeFile(self.client, self.bucket, self._abs(key), self._url(key), self.settings,
                                            self._pool))
        except FileNotFoundError:
            self._check_bucket()
            raise

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.read_ranges(key, [(start, length)])[0]

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Nearby ranges share a GET (up to ``read_block`` bytes); the GETs run in parallel."""
        order = sorted((s, n, i) for i, (s, n) in enumerate(ranges) if n > 0)
        groups: list[list[tuple[int, int, int]]] = []
        for r in order:
            g = groups[-1] if groups else None
            if g is not None and r[0] <= g[-1][0] + g[-1][1] + _COALESCE_GAP and \
                    r[0] + r[1] - g[0][0] <= self.settings.read_block:
                g.append(r)
            else:
                groups.append([r])
        full = self._abs(key)

        def fetch(g: list[tuple[int, int, int]]) -> tuple[int, bytes]:
            lo, hi = g[0][0], max(s + n for s, n, _ in g)
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=full, Range=f"bytes={lo}-{hi - 1}")["Body"]
                return lo, bytes(body.read())
            except Exception as e:
                if _c.is_network(e) and _c.not_found(e):
                    raise FileNotFoundError(2, f"{self._url(key)}: no such object", self._url(key)) from None
                if _c.code(e) in ("InvalidRange", "416"):
                    return lo, b""
                raise self._fail(e, "reading", key) from None

        out = [b""] * len(ranges)
        for g, (lo, data) in zip(groups, self._pool.map(fetch, groups)):
            for s, n, i in g:
                out[i] = data[s - lo:s - lo + n]
        return out

    def stat(self, key: str) -> Optional[ObjectInfo]:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._abs(key))
        except Exception as e:
            if _c.is_network(e) and _c.not_found(e):
                self._check_bucket()
                return None
            raise self._fail(e, "looking up", key) from None
        mtime = r.get("LastModified")
        return ObjectInfo(key, int(r.get("ContentLength", 0)), int(mtime.timestamp() * 1e9) if mtime else 0,
                          str(r.get("ETag", "")))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        folder = self._abs(prefix.strip("/")) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        out: list[ObjectInfo] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder,
                                                                               Delimiter="/"):
                for o in page.get("Contents", []):
                    if o["Key"].endswith("/"):
                        continue  # a "folder" marker some tools write
                    out.append(ObjectInfo(self._rel(o["Key"]), int(o["Size"]),
                                          int(o["LastModified"].timestamp() * 1e9), str(o.get("ETag", ""))))
        except Exception as e:
            raise self._fail(e, "listing", prefix) from None
        return out

    def list_dirs(self, prefix: str = "") -> "builtins.list[str]":
        """The "folders" directly under ``prefix``: the common prefixes of a delimited listing, and
        the folders this process made there (S3 has no empty folders)."""
        folder = self._abs(prefix.strip("/")) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        out: builtins.list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder,
                                                                               Delimiter="/"):
                out.extend(self._rel(p["Prefix"].rstrip("/")) for p in page.get("CommonPrefixes", []))
        except Exception as e:
            raise self._fail(e, "listing", prefix) from None
        for made in self._made:  # folders this process made hold nothing yet, but exist for it
            if made.startswith(folder) and made != folder.rstrip("/"):
                child = self._rel(folder + made[len(folder):].split("/", 1)[0])
                if child not in out:
                    out.append(child)
        return out

    def _check_bucket(self) -> None:
        """A clear error when the bucket itself is missing (HEAD object says only 404)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            if _c.is_network(e) and _c.code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"{self.url}: the bucket {self.bucket!r} does not exist at {self.endpoint}",
                                   file=self.url) from None
            raise self._fail(e, "checking the bucket") from None

    def isdir(self, prefix: str = "") -> bool:
        """A folder exists once made (by this process) or once anything is stored under it."""
        folder = self._abs(prefix.strip("/")) if prefix.strip("/") else self.prefix
        if folder in self._made:
            return True
        try:
            r = self.client.list_objects_v2(Bucket=self.bucket, Prefix=folder + "/" if folder else "", MaxKeys=1)
        except Exception as e:
            raise self._fail(e, "listing", prefix) from None
        return bool(r.get("KeyCount") or r.get("Contents"))

    # -- writing -----------------------------------------------------------
    def makedirs(self, prefix: str = "") -> None:
        """Folders are implicit on S3: this checks the bucket is there and reachable, once."""
        folder = self._abs(prefix.strip("/")) if prefix.strip("/") else self.prefix
        if folder not in self._made:
            self._check_bucket()
            self._made.add(folder)

    def commit(self, key: str, write: Callable[[BinaryIO], T], *, exclusive: bool = False) -> T:
        full = self._abs(key)
        url = self._url(key)
        conditional = self._conditional_writes() if exclusive else False
        w = UploadWriter(self.client, self.bucket, full, url, self.settings, self._pool,
                         metadata={"ckpt-writer": uuid.uuid4().hex[:12]})

        def before() -> None:
            for lease in self._leases:
                lease.check()
            if exclusive and not conditional and self.stat(key) is not None:
                raise ObjectExistsError(f"{url}: already exists; a checkpoint is never replaced", file=url)

        try:
            result = write(cast(BinaryIO, w))
            w.complete(condition=conditional, before=before)
        except BaseException as e:
            w.abort()
            if _c.is_network(e) and _c.precondition_failed(e):
                raise ObjectExistsError(f"{url}: another writer committed this object first; it was not replaced "
                                        "and nothing of this save is visible", file=url) from None
            if _c.is_network(e):
                err = _c.storage_error(e, url, "saving", self.endpoint)
                raise SaveError(f"{err.message}; nothing of this save is visible", file=url) from None
            raise
        return result

    def delete(self, keys: Iterable[str]) -> None:
        """DeleteObjects in batches of 1000 (missing keys are fine)."""
        full = [self._abs(k) for k in keys]
        for i in range(0, len(full), DELETE_BATCH):
            batch = full[i:i + DELETE_BATCH]
            try:
                r = self.client.delete_objects(Bucket=self.bucket,
                                               Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except Exception as e:
                raise self._fail(e, f"deleting {len(batch)} object(s)") from None
            errors = [x for x in r.get("Errors", []) if x.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StorageError(f"{self.url}: could not delete {len(errors)} object(s), e.g. "
                                   f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}",
                                   file=self.url)

    @contextlib.contextmanager
    def _held(self, lease: Lease) -> Iterator[None]:
        with lease:
            self._leases.append(lease)
            try:
                yield
            finally:
                self._leases.remove(lease)

    def lock(self, key: str, timeout: Optional[float] = None) -> contextlib.AbstractContextManager[None]:
        lease = Lease(self.client, self.bucket, self._abs(key), self.url, ttl=self.settings.lease_ttl,
                      timeout=timeout, cas=self._conditional_writes(), label=self._url(key))
        return self._held(lease)

    def cleanup(self, prefix: str, target: Callable[[str], bool]) -> None:
        """Abort the multipart uploads to accepted keys under ``prefix`` that writers which are gone
        left: all of them while this storage holds the writer lease (only the lease holder uploads,
        so any other upload is a dead or deposed writer's), else those started over
        ``abandoned_after`` seconds ago. Committed objects are never touched."""
        holding = bool(self._leases)
        folder = self._abs(prefix.strip("/")) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        cutoff = time.time() - self.settings.abandoned_after
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                      Prefix=folder):
                for u in page.get("Uploads", []):
                    rel = self._rel(u["Key"])
                    if not target(rel) or (not holding and u["Initiated"].timestamp() > cutoff):
                        continue
                    log.info("%s: aborting an abandoned upload of %s started %s", self.url, rel, u["Initiated"])
                    try:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                    except Exception as e:
                        if not (_c.is_network(e) and _c.code(e) in ("NoSuchUpload", "404")):
                            raise
        except Exception as e:
            raise self._fail(e, "cleaning up abandoned uploads") from None

    # -- conditional writes ------------------------------------------------
    def _conditional_writes(self) -> bool:
        """Whether this store honours If-None-Match/If-Match (probed once per endpoint and bucket)."""
        setting = self.settings.conditional_writes
        if setting is not None and setting != "auto":
            return bool(setting)
        ident = (self.endpoint, self.bucket)
        with _conditional_lock:
            if ident not in _conditional:
                _conditional[ident] = self._probe()
                if not _conditional[ident]:
                    warnings.warn(
                        f"{self.url}: the store at {self.endpoint} ignores conditional writes (If-None-Match/"
                        "If-Match); ckpt falls back to check-then-write, so two writers racing on one step or "
                        "one lease are not excluded", StorageWarning, stacklevel=3)
            return _conditional[ident]

    def _probe(self) -> bool:
        key = f"{self.prefix + '/' if self.prefix else ''}.ckpt-probe-{uuid.uuid4().hex}"
        c, b = self.client, self.bucket
        try:
            try:
                c.put_object(Bucket=b, Key=key, Body=b"1", IfNoneMatch="*")
            except Exception as e:
                if _c.is_network(e) and _c.code(e) in ("NotImplemented", "501", "InvalidArgument"):
                    return False  # the store rejects the headers outright
                raise
            honoured = 0
            for cond in ({"IfNoneMatch": "*"}, {"IfMatch": '"00000000000000000000000000000000"'}):
                try:
                    c.put_object(Bucket=b, Key=key, Body=b"2", **cond)
                except Exception as e:
                    if _c.is_network(e) and _c.code(e) in ("NotImplemented", "501", "InvalidArgument"):
                        continue
                    if not (_c.is_network(e) and _c.precondition_failed(e)):
                        raise
                    honoured += 1
            return honoured == 2
        except Exception as e:
            raise self._fail(e, "probing for conditional writes") from None
        finally:
            try:
                c.delete_object(Bucket=b, Key=key)
            except Exception:  # noqa: BLE001 - a stray probe object is harmless
                log.debug("%s: could not delete the probe object %s", self.url, key)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r}, endpoint={self.endpoint!r})"
