"""Measuring helpers: peak RSS, page-cache eviction and residency, durable writes, machine facts."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import mmap
import os
import platform
import resource
import sys
import threading

_PAGE = mmap.PAGESIZE


# -- memory -----------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size of this process."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil  # not Linux: fall back to psutil

    return int(psutil.Process().memory_info().rss)


class PeakRSS:
    """Peak RSS of this process from ``start()`` on.

    On Linux the kernel's high-water mark of this process's memory is reset with
    ``/proc/self/clear_refs`` (value 5), and ``VmHWM`` in ``/proc/self/status``
    afterwards is the exact peak since the reset, with no sampling. (This is the
    value ``getrusage(RUSAGE_SELF).ru_maxrss`` reports, except that ru_maxrss
    also keeps the peak of the pre-exec image — for a child started by a large
    parent, the parent's peak — which no reset clears.) Where the reset is not
    allowed, a thread samples the RSS every millisecond (it can miss short
    spikes); the method used is reported.
    """

    def __init__(self) -> None:
        self.method = "clear_refs+VmHWM"
        self._thread: threading.Thread | None = None
        self._stop = False
        self._peak = 0
        self.baseline = 0

    def start(self) -> None:
        self.baseline = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            hwm = _status_kib("VmHWM")
            if hwm is None or hwm * 1024 > self.baseline + (8 << 20):
                raise OSError("high-water mark not reset")
        except OSError:
            import time

            self.method = "1 ms sampling"
            self._peak = self.baseline

            def poll() -> None:
                while not self._stop:
                    self._peak = max(self._peak, rss_bytes())
                    time.sleep(0.001)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()

    def peak(self) -> int:
        if self._thread is not None:
            self._stop = True
            self._thread.join()
            return max(self._peak, rss_bytes())
        hwm = _status_kib("VmHWM")
        if hwm is None:
            return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_bytes())
        return max(hwm * 1024, rss_bytes())

    def growth(self) -> int:
        return max(0, self.peak() - self.baseline)


def _page_reporting() -> str | None:
    """A description of virtio-balloon free page reporting when the kernel has it on, else None."""
    base = "/sys/module/page_reporting/parameters"
    if not os.path.isdir(base):
        return None
    try:
        with open(os.path.join(base, "page_reporting_order")) as f:
            order = f.read().strip()
    except OSError:
        order = "?"
    driver = "/sys/bus/virtio/drivers/virtio_balloon"
    balloon = os.path.isdir(driver) and any(d.startswith("virtio") for d in os.listdir(driver))
    return f"free page reporting to the host {'on' if balloon else 'available'} (order {order})"


def refill(nbytes: int) -> None:
    """Touch ``nbytes`` of memory and free it at once, right before a timed operation.

    On a VM that returns free memory to its host (virtio-balloon free page
    reporting, about 2 s after it is freed), the first touch of such memory
    costs a host page fault, here 10-15 times slower than the kernel's own
    allocation. Memory freed a moment ago is not yet returned, so an operation
    that starts right after this call allocates (page cache, arrays) at the
    speed a machine without that behaviour has, for about its first 2 seconds.
    """
    import numpy as np

    chunk = 64 << 20
    held = []
    for _ in range(-(-nbytes // chunk)):
        a = np.empty(chunk, np.uint8)
        a.fill(0)
        held.append(a)
    del held


def page_reporting_on() -> bool:
    text = _page_reporting()
    return bool(text and " on " in text)


def memory_behaviour() -> str:
    """How fast this machine hands out memory: first touch of 256 MiB after the memory sat free, and again
    right after freeing it. On a VM that returns free memory to its host, the first is much slower."""
    import time

    import numpy as np

    def touch() -> float:
        t = time.perf_counter()
        a = np.empty(256 << 20, np.uint8)
        a.fill(1)
        del a
        return time.perf_counter() - t

    time.sleep(3)  # let memory freed by earlier work go back to the host, where a VM does that
    first = touch()
    again = touch()
    text = (f"touching fresh memory {0.25 / first:.2f} GiB/s after it sat free for 3 s, "
            f"{0.25 / again:.2f} GiB/s right after it was freed")
    reporting = _page_reporting()
    return f"{text}; {reporting}" if reporting else text


# -- files and the page cache ----------------------------------------------
def files_of(path: str) -> list[str]:
    """The regular files of a checkpoint: the file itself, or every file under a directory."""
    if os.path.isfile(path):
        return [path]
    out = []
    for root, _, names in os.walk(path):
        for n in sorted(names):
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return sorted(out)


def dirs_of(path: str) -> list[str]:
    if os.path.isfile(path):
        return [os.path.dirname(os.path.abspath(path))]
    out = [os.path.dirname(os.path.abspath(path)), path]
    for root, names, _ in os.walk(path):
        out.extend(os.path.join(root, n) for n in names)
    return out


def size_of(path: str) -> int:
    return sum(os.path.getsize(p) for p in files_of(path))


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync every file of a checkpoint, then every directory that holds them (new names durable)."""
    for p in files_of(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for d in dirs_of(path):
        fsync_dir(d)


def evict(path: str) -> None:
    """Drop a checkpoint's pages from the page cache (fsync first: dirty pages are not dropped)."""
    for p in files_of(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(path: str) -> None:
    """Read every file of a checkpoint once so that its pages are in the page cache."""
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for p in files_of(path):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


_libc = None


def _mincore_lib():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        _libc = lib
    return _libc


def resident_fraction(path: str) -> float | None:
    """Fraction of a checkpoint's pages in the page cache, by mincore(2); None where unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = _mincore_lib()
    except OSError:
        return None
    total = resident = 0
    for p in files_of(path):
        size = os.path.getsize(p)
        if size == 0:
            continue
        pages = (size + _PAGE - 1) // _PAGE
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = lib.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vec = (ctypes.c_ubyte * pages)()
                if lib.mincore(addr, size, vec) != 0:
                    return None
                resident += sum(1 for b in bytes(vec) if b & 1)
            finally:
                lib.munmap(addr, size)
        finally:
            os.close(fd)
        total += pages
    return resident / total if total else 1.0


# -- the machine -------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def filesystem_of(path: str) -> tuple[str, str, str]:
    """(mount point, filesystem type, device) holding ``path``, from /proc/self/mountinfo."""
    path = os.path.realpath(path)
    best = ("?", "?", "?")
    best_len = -1
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                mount = fields[4].replace("\\040", " ")
                fstype, device = right.split()[:2]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= best_len:
                    best, best_len = (mount, fstype, device), len(mount)
    except (OSError, IndexError, ValueError):
        pass
    return best


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - any failure means "not installed" here
        return "not installed"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine(bench_dir: str) -> dict[str, str]:
    mount, fstype, device = filesystem_of(bench_dir)
    mem = _mem_total()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "ram": f"{mem / 2**30:.1f} GiB" if mem else "?",
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": f"{fstype} on {device} (mounted at {mount}); benchmark files in {bench_dir}",
        "python": platform.python_version(),
        "versions": ", ".join(f"{m} {_version(m)}" for m in
                              ("numpy", "ml_dtypes", "jax", "jaxlib", "ckpt", "objax", "orbax-checkpoint",
                               "tensorstore", "safetensors")),
    }
