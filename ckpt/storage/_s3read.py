"""A seekable file over one S3 object that reads it in few, large, parallel ranged GETs.

Zip readers (ckpt's and numpy's) read the end of a file first (EOCD, central directory,
manifest), then members front to back. This file serves that pattern from a small block cache:

* opening is one suffix GET of the last ``tail_bytes`` (the whole object when it is smaller),
  which also tells the size and the ETag, so there is no HEAD;
* a read outside the cache fetches up to ``read_block`` bytes from there (stopping at the next
  cached byte; a small jump such as a header read fetches only 64 KiB) and starts fetching the next ``readahead`` blocks in background threads, so a
  restore is about ``1 + size / read_block`` GETs and the hashing overlaps the transfer;
* every later GET carries ``If-Match: <etag>``: an object replaced while it is being read is an
  error, never a mix of two checkpoints.

Memory is bounded: at most ``readahead + 2`` blocks plus the tail are held.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import FormatError
from . import _s3client as _c


#: A read smaller than this that does not continue the last one fetches only this much.
_SMALL_READ = 64 << 10


class RangeFile(io.RawIOBase):
    """Read-only, seekable view of ``s3://bucket/key`` (see the module docstring)."""

    #: ckpt's zip reader checks each local header when its member is read, not all at open.
    ckpt_lazy_headers = True

    def __init__(self, client: Any, bucket: str, key: str, url: str, settings: _c.Settings,
                 pool: ThreadPoolExecutor):
        super().__init__()
        self._client, self._bucket, self._key, self.name = client, bucket, key, url
        self._s = settings
        self._pool = pool
        self._pos = 0
        self._last_end = -1
        self._lock = threading.Lock()
        self._blocks: dict[int, bytes] = {}            # block number -> bytes
        self._pending: dict[int, tuple[int, Future[bytes]]] = {}  # block number -> (end, future)
        self._window: tuple[int, bytes] = (0, b"")
        self.etag = ""
        self.size = 0
        self._tail_start = 0
        self._tail = b""
        self._open_tail()

    # -- fetching ----------------------------------------------------------
    def _get(self, range_header: str, *, match: bool = True) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": range_header}
        if match and self.etag:
            kwargs["IfMatch"] = self.etag
        try:
            return self._client.get_object(**kwargs)  # type: ignore[no-any-return]
        except Exception as e:
            if not _c.is_network(e):
                raise
            if _c.code(e) in ("InvalidRange", "416"):  # an empty object has no last byte
                return {"Body": io.BytesIO(b""), "ContentRange": "bytes */0", "ETag": ""}
            if _c.not_found(e):
                raise FileNotFoundError(2, f"{self.name}: no such object", self.name) from None
            if _c.precondition_failed(e):
                raise FormatError(f"{self.name}: the object was replaced while it was being read "
                                  f"(ETag {self.etag} no longer matches); read it again", file=self.name) from None
            raise _c.storage_error(e, self.name, "reading") from None

    def _open_tail(self) -> None:
        r = self._get(f"bytes=-{max(1, self._s.tail_bytes)}", match=False)
        data = r["Body"].read()
        self.etag = r.get("ETag", "")
        content_range = r.get("ContentRange") or ""
        self.size = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else len(data)
        self._tail_start = self.size - len(data)
        self._tail = data

    def _fetch(self, start: int, end: int) -> bytes:
        data: bytes = self._get(f"bytes={start}-{end - 1}")["Body"].read()
        if len(data) != end - start:
            raise FormatError(f"{self.name}: asked for bytes {start}-{end - 1}, the store sent {len(data)}",
                              file=self.name)
        return data

    def _block(self, i: int) -> tuple[int, int]:
        return i * self._s.read_block, min((i + 1) * self._s.read_block, self._tail_start)

    def _request(self, i: int) -> None:
        """Start fetching block ``i`` (caller holds the lock)."""
        start, end = self._block(i)
        if start < end and i not in self._blocks and i not in self._pending:
            self._pending[i] = (end, self._pool.submit(self._fetch, start, end))

    def _segment(self, pos: int, want: int) -> tuple[int, bytes]:
        """Cached bytes holding ``pos``: the tail, the small first window, or an aligned block
        (fetched on a miss, with the next ``readahead`` blocks in the background)."""
        if pos >= self._tail_start:
            return self._tail_start, self._tail
        w_start, window = self._window
        if w_start <= pos < w_start + len(window):
            return w_start, window
        i = pos // self._s.read_block
        with self._lock:
            if i in self._blocks:
                return self._block(i)[0], self._blocks[i]
            if not self._blocks and not self._pending and not window and want < _SMALL_READ \
                    and pos != self._last_end:
                # The first small look into the data (a format sniff): a small window, not a block,
                # so that listing and opening stay cheap.
                end = min(self._tail_start, pos + _SMALL_READ)
                self._window = (pos, self._fetch(pos, end))
                return self._window
            for j in range(i, i + 1 + self._s.readahead):
                self._request(j)
            fut = self._pending[i][1]
        data = fut.result()
        with self._lock:
            self._pending.pop(i, None)
            self._blocks[i] = data
            self._window = (0, b"")
        return self._block(i)[0], data

    def _consumed(self, start: int, end: int) -> None:
        """A streaming read went from ``start`` past ``end``: blocks wholly behind it are done
        (each byte of a restore is read once), so memory stays about one block plus the readahead."""
        first, last = start // self._s.read_block, end // self._s.read_block
        with self._lock:
            for i in range(first, last):
                if self._block(i)[1] <= end:
                    self._blocks.pop(i, None)

    # -- the file API ------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.name}: negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        want = min(len(view), max(0, self.size - self._pos))
        done = 0
        begin, streaming = self._pos, self._pos == self._last_end
        while done < want:
            s, data = self._segment(self._pos, want - done)
            off = self._pos - s
            n = min(want - done, len(data) - off)
            view[done:done + n] = data[off:off + n]
            done += n
            self._pos += n
        self._last_end = self._pos
        if streaming or want >= _SMALL_READ:
            self._consumed(begin, self._pos)
        return done

    def readall(self) -> bytes:
        return self.read(max(0, self.size - self._pos))

    def close(self) -> None:
        with self._lock:
            for _, fut in self._pending.values():
                fut.cancel()
            self._pending.clear()
            self._blocks.clear()
            self._tail = b""
        super().close()
