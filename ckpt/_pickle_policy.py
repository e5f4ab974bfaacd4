"""What an untrusted pickle may import and call: judged by what a global can do, not by its name alone.

Three tiers (docs/FORMAT.md, "Pickle slots"):

* :data:`VETTED`: reconstructors and value classes that build plain data and can
  run no other code. They are the only names a refusal message ever suggests as an
  exact allow-list. A pickle that imports nothing at all loads without trust.
* Globals an allow-list pattern admits: a class may be reconstructed (called);
  any other object (a function such as an activation) may only be *referenced*:
  a pickle that calls it is refused.
* Never admitted by any pattern, only by ``trusted=True``: anything in a module
  that imports by name, loads pickles or ``.npy`` files with pickles, writes or
  opens files, runs processes, execs, evals or compiles (:data:`DENIED_MODULES`),
  functions with such names anywhere (:data:`DENIED_NAMES`), and classes that
  call what they are given or touch the system (:data:`DENIED_CLASSES`).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Optional, Sequence

from ._pickle_scan import DYNAMIC

#: Globals that only build plain values. Pickles of builtins, numpy arrays/scalars/dtypes and
#: ckpt's own helpers use nothing else.
VETTED = frozenset({
    "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.bytes", "builtins.complex",
    "builtins.slice", "builtins.list", "builtins.dict", "builtins.tuple", "builtins.int",
    "builtins.float", "builtins.str", "builtins.bool", "builtins.object",
    "collections.OrderedDict", "collections.deque", "collections.Counter",
    "copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__", "_codecs.encode",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
    "numpy.ndarray", "numpy.dtype",
    "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
    "decimal.Decimal", "fractions.Fraction",
    "ckpt._module_pickle.set_state",
})

#: ckpt's own helpers: admitted by any allow-list without being listed.
ALWAYS = frozenset({"ckpt._module_pickle.set_state"})

#: Modules (and their submodules) whose every global is refused whatever the patterns say.
DENIED_MODULES = (
    "builtins", "__builtin__", "os", "posix", "nt", "posixpath", "ntpath", "genericpath", "subprocess", "sys",
    "importlib", "imp", "zipimport", "pkgutil", "pydoc", "runpy", "site", "sysconfig", "pickle", "_pickle",
    "pickletools", "copyreg", "copy_reg", "shelve", "dbm", "marshal", "shutil", "socket", "socketserver", "ssl",
    "select", "selectors", "ctypes", "cffi", "code", "codeop", "compileall", "py_compile", "pty", "tty",
    "multiprocessing", "concurrent", "pdb", "bdb", "trace", "profile", "cProfile", "timeit", "doctest",
    "unittest", "webbrowser", "asyncio", "threading", "_thread", "signal", "atexit", "gc", "weakref",
    "tempfile", "io", "_io", "pathlib", "glob", "fileinput", "linecache", "tokenize", "ast", "inspect", "dis",
    "types", "functools", "operator", "itertools", "contextlib", "zipfile", "tarfile", "gzip", "bz2", "lzma",
    "zlib", "sqlite3", "mmap", "fcntl", "resource", "platform", "logging", "smtplib", "ftplib", "telnetlib",
    "poplib", "imaplib", "nntplib", "http", "urllib", "xmlrpc", "email", "mailbox", "distutils", "setuptools",
    "pip", "ensurepip", "venv", "cloudpickle", "dill", "joblib", "torch", "IPython",
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "pydoc_data",
    "numpy.testing", "numpy.distutils", "numpy.f2py", "numpy.ctypeslib", "numpy.lib.npyio", "numpy.lib.format",
    "numpy.lib._npyio_impl", "numpy.lib._datasource", "numpy.lib.utils", "numpy.lib._utils_impl",
    "numpy._pytesttester", "numpy.ma.core", "numpy.core.records", "numpy._core.records", "numpy.rec",
    "jax.experimental.serialize_executable", "jax.profiler", "jax._src.profiler", "jax.experimental.compilation_cache",
    "jax._src.compilation_cache", "jax.config", "jax._src.config", "jax.experimental.io_callback",
    "numpy.lib.stride_tricks", "numpy.lib._stride_tricks_impl",  # DummyArray: an array over any address
)

#: Attribute names that load, save, import, exec or evaluate, refused in any module.
DENIED_NAMES = frozenset({
    "load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile", "tofile",
    "fromregex", "dump", "dumps", "memmap", "open", "exec", "eval", "compile", "system", "popen", "spawn",
    "import_module", "__import__", "locate", "resolve_name", "timeit", "runstring", "import_string", "getattr",
    "setattr", "delattr", "execfile", "runcode", "runsource", "start_trace", "save_device_memory_profile",
    "deserialize_and_load", "urlopen", "urlretrieve", "remove", "unlink", "rmtree", "rename", "mkdir", "makedirs",
    "write_text", "write_bytes", "DataSource", "NpzFile", "vectorize", "frompyfunc", "piecewise",
    "apply_along_axis", "apply_over_axes", "pure_callback", "io_callback", "callback", "debug_callback",
    "lookfor", "info", "source", "show_config", "update",
})

#: Classes refused (with their subclasses) because constructing or iterating one calls what it is given,
#: opens files or sockets, or runs code.
DENIED_CLASSES = frozenset({
    "builtins.map", "builtins.filter", "builtins.type", "builtins.function", "builtins.code", "builtins.module",
    "builtins.method", "builtins.property", "builtins.classmethod", "builtins.staticmethod",
    "functools.partial", "numpy.memmap", "numpy.vectorize", "weakref.finalize",
})


def module_denied(module: str) -> bool:
    """True if ``module`` is, or is inside, one of :data:`DENIED_MODULES`."""
    return any(module == m or module.startswith(m + ".") for m in DENIED_MODULES)


def name_denied(full: str) -> bool:
    """True if no allow-list may admit the global ``module.qualname`` (vetted names never are)."""
    if full in VETTED:
        return False
    if full == DYNAMIC or full.startswith("<"):
        return True
    return module_denied(full) or any(p in DENIED_NAMES for p in full.split(".")[1:])


def admitted(full: str, patterns: Sequence[str]) -> bool:
    """True if an allow-list (``fnmatch`` patterns) may import ``full``: matched and not denied (or ckpt's own)."""
    if full in ALWAYS:
        return True
    return not name_denied(full) and any(fnmatch.fnmatchcase(full, p) for p in patterns)


def real_name(target: Any) -> str:
    """``module.qualname`` of what a global really is (a re-export is judged by its origin)."""
    return f"{getattr(target, '__module__', '') or ''}.{getattr(target, '__qualname__', '') or ''}"


def judge_target(full: str, target: Any, called: bool) -> Optional[str]:
    """Why the resolved global ``target`` may not be used, or None when it may."""
    if full in VETTED:
        return None
    real = real_name(target)
    if isinstance(target, type):
        for base in target.__mro__:
            base_name = real_name(base)
            if base_name in DENIED_CLASSES or (base.__module__ != "builtins" and module_denied(base.__module__)
                                               and base_name not in VETTED):
                return f"which is a {base_name}, a class that can run code or touch the system"
        return None
    if callable(target) and name_denied(real):
        return f"which is {real}, a code-execution primitive only trusted=True permits"
    if called:
        return ("which the pickle calls with arguments of its choosing; an allow-list admits only classes "
                "and ckpt's vetted reconstructors to be called")
    return None
