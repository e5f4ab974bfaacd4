"""Streaming one new S3 object as a multipart upload with bounded memory, committed whole.

The writer hands out a sequential, non-seekable file (the zip writer then uses data
descriptors). Bytes collect in one part-sized buffer; full parts upload in background threads,
at most ``parts_in_flight`` at once, so a save never holds more than ``parts_in_flight + 1``
parts, whatever the checkpoint's size. Nothing is visible until CompleteMultipartUpload
returns; with ``exclusive`` it carries ``If-None-Match: *`` so an existing object is never
replaced. Objects smaller than one part are a single PutObject instead (same condition).
Any failure aborts the upload: a killed writer's parts stay invisible until
:meth:`S3Storage.cleanup` aborts them.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

from . import _s3client as _c

#: S3 allows 10,000 parts: the part size doubles every this many parts (a 16 MiB start reaches 1 TiB+).
_PARTS_PER_STEP = 2000


class UploadWriter:
    """The sequential file :meth:`S3Storage.commit` passes to its ``write`` callback."""

    def __init__(self, client: Any, bucket: str, key: str, url: str, settings: _c.Settings,
                 pool: ThreadPoolExecutor, metadata: Optional[dict[str, str]] = None):
        self._client, self._bucket, self._key, self.name = client, bucket, key, url
        self._s = settings
        self._pool = pool
        self._metadata = metadata or {}
        self._buf = bytearray()
        self._pos = 0
        self._upload_id: Optional[str] = None
        self._parts: list[tuple[int, Future[str]]] = []
        self._slots = threading.BoundedSemaphore(max(1, settings.parts_in_flight))
        self.closed = False

    # -- file API ----------------------------------------------------------
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self._pos += n
        part = self._part_size()
        while len(view):
            room = part - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= part:
                self._send(bytes(self._buf))
                self._buf = bytearray()
                part = self._part_size()
        return n

    # -- parts -------------------------------------------------------------
    def _part_size(self) -> int:
        return max(5 << 20, self._s.part_size) << (len(self._parts) // _PARTS_PER_STEP)

    def _send(self, data: bytes) -> None:
        if self._upload_id is None:
            r = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key, Metadata=self._metadata)
            self._upload_id = r["UploadId"]
        for _, done in self._parts:  # surface a failed part early instead of uploading the rest
            if done.done() and done.exception() is not None:
                done.result()
        number = len(self._parts) + 1
        self._slots.acquire()  # bounds the parts held in memory
        try:
            fut = self._pool.submit(self._upload_part, number, data)
        except BaseException:
            self._slots.release()
            raise
        self._parts.append((number, fut))

    def _upload_part(self, number: int, data: bytes) -> str:
        try:
            r = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                         PartNumber=number, Body=data)
            return str(r["ETag"])
        finally:
            self._slots.release()

    # -- commit / abort ----------------------------------------------------
    def complete(self, *, condition: bool, before: Callable[[], None]) -> str:
        """Make the object visible (``If-None-Match: *`` when ``condition``); returns its ETag.
        ``before`` runs just before the commit request (the last chance to refuse)."""
        cond = {"IfNoneMatch": "*"} if condition else {}
        if self._upload_id is None:
            before()
            r = self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buf),
                                        Metadata=self._metadata, **cond)
            return str(r.get("ETag", ""))
        if self._buf or not self._parts:
            self._send(bytes(self._buf))
            self._buf = bytearray()
        parts = [{"PartNumber": n, "ETag": fut.result()} for n, fut in self._parts]
        before()
        r = self._client.complete_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                                   MultipartUpload={"Parts": parts}, **cond)
        return str(r.get("ETag", ""))

    def abort(self) -> None:
        """Drop what was uploaded (best effort: cleanup() aborts whatever this could not)."""
        for _, fut in self._parts:
            fut.cancel()
        for _, fut in self._parts:
            if not fut.cancelled():
                try:
                    fut.result()
                except Exception:  # noqa: BLE001 - the first error is the one raised
                    pass
        self._buf = bytearray()
        if self._upload_id is not None:
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self.closed = True
