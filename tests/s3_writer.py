"""A second process for tests/test_s3_storage.py, killed with SIGKILL by the test.

``python tests/s3_writer.py MODE ENDPOINT URL [ARG]``; prints ``ready`` (flushed) once it reached
the state the test waits for, then sleeps until killed.

Modes:
  hang-mid-upload KEY   take the writer lease (TTL 1 s), stream KEY as a multipart upload, and after
                        three parts are sent print "ready" inside the write (never completed).
  hold-lease TTL        take the root's writer lease with a TTL of TTL seconds, print "ready".
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from s3_server import options  # noqa: E402

from ckpt.storage.s3 import S3Storage  # noqa: E402


def main() -> None:
    mode, endpoint, url = sys.argv[1:4]
    if mode == "hang-mid-upload":
        st = S3Storage(url, options(endpoint, part_size=5 << 20, lease_ttl=1.0))

        def write(f):  # noqa: ANN001
            for _ in range(3):
                f.write(b"x" * (5 << 20))
            time.sleep(1.0)  # the parts are in flight in background threads; let them land
            print("ready", flush=True)
            time.sleep(3600)

        with st.lock(".ckpt-lease"):
            st.commit(sys.argv[4], write, exclusive=True)
    elif mode == "hold-lease":
        st = S3Storage(url, options(endpoint, lease_ttl=float(sys.argv[4])))
        with st.lock(".ckpt-lease"):
            print("ready", flush=True)
            time.sleep(3600)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
