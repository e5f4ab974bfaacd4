"""The tools compared: how each one saves the model durably and restores it.

Every tool is a class with

- ``needs``: modules it imports (a missing one makes the row "skipped: ...");
- ``prepare(model)``: the model (a dict of numpy arrays) in the form the tool
  takes (numpy dict, JAX arrays, objax VarCollection), built before timing;
- ``save(path, obj)``: a durable save (for tools that do not fsync themselves,
  the benchmark fsyncs the files and their directory inside the timed region);
- ``template(spec)``: what a restore fills (e.g. an objax VarCollection of
  zeros), built before timing;
- ``restore(path, template)``: the restored arrays, fully read into memory (or,
  for ckpt's zero-copy row, verified views of the mapped file);
- ``as_numpy(restored)``: name -> numpy array for the correctness check (after timing).

``source`` names the tool whose file a restore-only row reads.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import _measure
import _model
import numpy as np


def _bf16_names(spec: _model.Spec) -> set[str]:
    return {n for n, _, t in spec if t == "bfloat16"}


def _views(path: str, *, verify: bool) -> dict[str, Any]:
    """ckpt's zero-copy read: hashes checked up front on every core, then read-only views of the mapping."""
    from ckpt.varfile import open_reader

    with open_reader(path, mmap=True) as r:
        v = r.arrays("main", verify=verify)
        v.verify(v.names)
        return {n: v.read(n, copy=False) for n in v.names}


def _block(values: Any) -> None:
    import jax

    jax.block_until_ready(values)


class Tool:
    key = ""
    label = ""
    needs: tuple[str, ...] = ()
    ops: tuple[str, ...] = ("save", "restore")
    source: str | None = None  # restore-only rows: the tool whose file they read
    name = "model"  # file or directory name of the checkpoint
    note = ""

    def __init__(self, spec: _model.Spec):
        self.spec = spec

    def prepare(self, model: dict[str, np.ndarray]) -> Any:
        return model

    def save(self, path: str, obj: Any) -> dict[str, float]:
        raise NotImplementedError

    def template(self) -> Any:
        return None

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        raise NotImplementedError

    def as_numpy(self, restored: Any) -> Mapping[str, Any]:
        return restored

    def check_saved(self, path: str) -> Mapping[str, Any]:
        """Read back what a save-only row wrote (for the correctness check)."""
        raise NotImplementedError


# -- the disk's own limit -------------------------------------------------------
class Raw(Tool):
    key = "raw"
    label = "raw disk: os.write loop + fsync / readinto"
    name = "model.bin"
    note = ("the same bytes, one os.write loop then fsync (file and directory); read back with readinto into a "
            "preallocated, pre-touched buffer: the upper limit for this disk and page cache")

    def save(self, path: str, obj: Mapping[str, np.ndarray]) -> dict[str, float]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            for arr in obj.values():
                view = memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
                while len(view):
                    view = view[os.write(fd, view[:1 << 30]):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _measure.fsync_dir(os.path.dirname(path))
        return {}

    def template(self) -> Any:
        buf = np.empty(_model.total_bytes(self.spec), np.uint8)
        buf.fill(0)  # touched: the limit excludes allocating and faulting in the destination
        return buf

    def restore(self, path: str, template: np.ndarray) -> Mapping[str, Any]:
        view = memoryview(template)  # type: ignore[arg-type]
        with open(path, "rb", buffering=0) as f:
            while len(view):
                n = f.readinto(view)
                if not n:
                    raise EOFError(f"{path}: short read")
                view = view[n:]
        return {"buffer": template}

    def as_numpy(self, restored: Mapping[str, Any]) -> Mapping[str, Any]:
        buf, out, pos = restored["buffer"], {}, 0
        for name, shape, dt in self.spec:
            n = _model.nbytes(shape, dt)
            out[name] = buf[pos:pos + n].view(_model.dtype_of(dt)).reshape(shape)
            pos += n
        return out


class RawAlloc(Raw):
    key = "raw-alloc"
    label = "raw disk: readinto a buffer allocated in the timed region"
    ops = ("restore",)
    source = "raw"
    note = ("raw readinto, but into a buffer allocated (np.empty) inside the timed region, as every real restore "
            "must: the limit for a restore that allocates its arrays, page faults included")

    def template(self) -> Any:
        return None

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        return super().restore(path, np.empty(_model.total_bytes(self.spec), np.uint8))


# -- ckpt ---------------------------------------------------------------------
class Ckpt(Tool):
    key = "ckpt"
    label = "ckpt save_var_collection / ckpt.load (a)"
    needs = ("ckpt",)
    name = "model.npz"
    note = ("(a) save_var_collection (BLAKE3 digests, the default); ckpt.load(path): every member's digest verified, "
            "arrays copied into writable numpy memory")

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import ckpt

        ckpt.save_var_collection(path, obj)  # temp file, fsync, rename, directory fsync
        return {}

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        import ckpt

        return ckpt.load(path)


class CkptViews(Tool):
    key = "ckpt-views"
    label = "ckpt zero-copy verified views (b)"
    needs = ("ckpt",)
    ops = ("restore",)
    source = "ckpt"
    note = ("(b) open_reader + arrays('main').verify(names) + read(name, copy=False): hashes checked on every "
            "core over the mmap, arrays are read-only views of the mapped file (their pages count in RSS)")

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        return _views(path, verify=True)


class CkptObjax(Tool):
    key = "ckpt-objax"
    label = "ckpt load_var_collection into objax vars (c)"
    needs = ("ckpt", "jax", "objax")
    ops = ("restore",)
    source = "ckpt"
    note = "(c) ckpt.load_var_collection(path, vc): verified, assigned into an objax VarCollection of JAX arrays"

    def template(self) -> Any:
        import jax.numpy as jnp
        import objax

        return objax.VarCollection(
            {n: objax.TrainVar(jnp.zeros(shape, _model.dtype_of(dt))) for n, shape, dt in self.spec})

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        import ckpt

        ckpt.load_var_collection(path, template)
        _block([v.value for v in template.values()])
        return template

    def as_numpy(self, restored: Any) -> Mapping[str, Any]:
        return {n: np.asarray(v.value) for n, v in restored.items()}


class CkptNoVerify(Tool):
    key = "ckpt-noverify"
    label = "ckpt.load(verify=False)"
    needs = ("ckpt",)
    ops = ("restore",)
    source = "ckpt"
    note = "ckpt.load(path, verify=False): no digest check (the zip structure is still validated)"

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        import ckpt

        return ckpt.load(path, verify=False)


class _NoHash:
    """A stand-in for ckpt's digest hashers that does nothing (to measure what hashing costs)."""

    def __init__(self, *args: Any) -> None:
        pass

    def update(self, data: Any) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64

    def digest(self) -> bytes:
        return bytes(32)


class _CkptVariant(Ckpt):
    """The ckpt (a) save under a setting that ``variant()`` applies for the save only."""

    ops = ("save",)
    verify_back = True

    def variant(self) -> Any:
        raise NotImplementedError

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import ckpt

        with self.variant():
            ckpt.save_var_collection(path, obj)
        return {}

    def check_saved(self, path: str) -> Mapping[str, Any]:
        return _views(path, verify=self.verify_back)


class CkptNoHash(_CkptVariant):
    key = "ckpt-nohash"
    label = "ckpt save_var_collection, digest patched out"
    verify_back = False
    note = ("the same save with the zip writer's member hasher replaced by a no-op (in the benchmark process "
            "only; read back with verify=False): the cost of hashing is the difference")

    @contextlib.contextmanager
    def variant(self) -> Iterator[None]:
        import types

        import ckpt._zip as z

        saved = z._digest
        z._digest = types.SimpleNamespace(new=_NoHash)  # type: ignore[assignment]  # the zip writer's hasher only
        try:
            yield
        finally:
            z._digest = saved


class CkptSha256(_CkptVariant):
    key = "ckpt-sha256"
    label = "ckpt save_var_collection, sha256 digests"
    note = ("the same save with `ckpt.set_digest(\"sha256\")` (the digest before BLAKE3, format version 1), "
            "read back verified")

    @contextlib.contextmanager
    def variant(self) -> Iterator[None]:
        import ckpt

        ckpt.set_digest("sha256")
        try:
            yield
        finally:
            ckpt.set_digest(None)


def pin_to_one_core() -> None:
    """Every thread of this process (and the ones it starts later) on one CPU, as ``taskset -c`` would."""
    cpu = min(os.sched_getaffinity(0))
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


class Ckpt1Core(Ckpt):
    key = "ckpt-1core"
    label = "ckpt save_var_collection on 1 core"
    ops = ("save",)
    note = ("the ckpt (a) save with the process pinned to one CPU (sched_setaffinity, as `taskset -c 0`) before "
            "its thread pools start: with the 2-core row, how the save scales with cores")

    def prepare(self, model: dict[str, np.ndarray]) -> Any:
        pin_to_one_core()
        return model

    def check_saved(self, path: str) -> Mapping[str, Any]:
        return _views(path, verify=True)


class Raw1Core(Raw):
    key = "raw-1core"
    label = "raw write+fsync on 1 core"
    ops = ("save",)
    note = "the raw save pinned to one CPU: the 1-core disk limit"

    def prepare(self, model: dict[str, np.ndarray]) -> Any:
        pin_to_one_core()
        return model

    def check_saved(self, path: str) -> Mapping[str, Any]:
        return self.restore(path, np.empty(_model.total_bytes(self.spec), np.uint8))


class _CkptJax(Tool):
    needs = ("ckpt", "jax")
    ops = ("save",)
    name = "run"  # a Checkpoint log directory

    def prepare(self, model: dict[str, np.ndarray]) -> Any:
        import jax

        out = {n: jax.device_put(a) for n, a in model.items()}
        _block(list(out.values()))
        return out

    def check_saved(self, path: str) -> Mapping[str, Any]:
        return _views(os.path.join(path, "ckpt", "0000000001.npz"), verify=True)


class CkptJaxSync(_CkptJax):
    key = "ckpt-jax-sync"
    label = "ckpt Checkpoint.save, JAX arrays, sync"
    note = "Checkpoint(dir).save(params, idx=1) with the model held as JAX arrays (CPU), blocking"

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import ckpt

        with ckpt.Checkpoint(path, keep_ckpts=2) as ck:
            ck.save(obj, idx=1)
        return {}


class CkptJaxAsync(_CkptJax):
    key = "ckpt-jax-async"
    label = "ckpt Checkpoint.save, JAX arrays, async"
    note = ("Checkpoint(dir, async_save=True).save(params, idx=1): 'blocked' is how long save() takes to return, "
            "the save time is until wait() returns (durable)")

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import time

        import ckpt

        ck = ckpt.Checkpoint(path, keep_ckpts=2, async_save=True)
        t0 = time.perf_counter()
        ck.save(obj, idx=1)
        blocked = time.perf_counter() - t0
        ck.wait()
        durable = time.perf_counter() - t0
        ck.close()
        return {"blocked_s": blocked, "durable_s": durable}


class CkptNpSync(Tool):
    key = "ckpt-np-sync"
    label = "ckpt Checkpoint.save, writable numpy, sync"
    needs = ("ckpt",)
    ops = ("save",)
    name = "run"
    async_save = False
    note = "Checkpoint(dir).save(model, idx) with the model held as writable numpy arrays, blocking (2nd save timed)"

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import time

        import ckpt

        ck = ckpt.Checkpoint(path, keep_ckpts=2, async_save=self.async_save)
        t0 = time.perf_counter()
        ck.save(obj, idx=1)  # the first save: an async manager allocates its snapshot buffers here
        first = time.perf_counter() - t0
        ck.wait()
        t0 = time.perf_counter()
        ck.save(obj, idx=2)
        blocked = time.perf_counter() - t0
        ck.wait()
        durable = time.perf_counter() - t0
        ck.close()
        return {"blocked_s": blocked, "first_blocked_s": first, "seconds": durable}

    def check_saved(self, path: str) -> Mapping[str, Any]:
        return _views(os.path.join(path, "ckpt", "0000000002.npz"), verify=True)


class CkptNpAsync(CkptNpSync):
    key = "ckpt-np-async"
    label = "ckpt Checkpoint.save, writable numpy, async"
    async_save = True
    note = ("Checkpoint(dir, async_save=True) with writable numpy arrays: two saves, the second timed; 'blocked' is "
            "until its save() returned (the snapshot copy into the buffers the first save allocated), the save "
            "time until wait() returned; 'first save blocked' in the samples is the first save's blocking")


# -- peers --------------------------------------------------------------------
class Npz(Tool):
    key = "npz"
    label = "np.savez / np.load"
    name = "model.npz"
    note = "np.savez(path, **arrays) + fsync; np.load reads bfloat16 back as |V2, viewed as bfloat16 (timed)"

    def save(self, path: str, obj: Mapping[str, np.ndarray]) -> dict[str, float]:
        np.savez(path, **obj)  # type: ignore[arg-type]
        _measure.fsync_tree(path)
        return {}

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        bf16 = _bf16_names(self.spec)
        out = {}
        with np.load(path) as z:
            for k in z.files:
                a = z[k]
                out[k] = a.view(_model.dtype_of("bfloat16")) if k in bf16 else a
        return out


class Objax(Tool):
    key = "objax"
    label = "objax.io save/load_var_collection"
    needs = ("jax", "objax")
    name = "model.npz"
    note = ("objax.io.save_var_collection(path, vc) + fsync; load_var_collection(path, vc). objax 1.8 cannot "
            "restore ml_dtypes bfloat16 (np.load gives |V2, which JAX refuses), so its bfloat16 variables hold "
            "the same bits as uint16")

    def _vc(self, arrays: Mapping[str, Any]) -> Any:
        import jax.numpy as jnp
        import objax

        vc = objax.VarCollection()
        for n, a in arrays.items():
            vc[n] = objax.StateVar(jnp.asarray(a))
        return vc

    def _bits(self, name: str, a: Any) -> Any:
        return a.view(np.uint16) if name in _bf16_names(self.spec) else a

    def prepare(self, model: dict[str, np.ndarray]) -> Any:
        vc = self._vc({n: self._bits(n, a) for n, a in model.items()})
        _block([v.value for v in vc.values()])
        return vc

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import objax

        objax.io.save_var_collection(path, obj)  # writes path.tmp, then renames
        _measure.fsync_tree(path)
        return {}

    def template(self) -> Any:
        bf16 = _bf16_names(self.spec)
        return self._vc({n: np.zeros(shape, np.uint16 if n in bf16 else _model.dtype_of(dt))
                         for n, shape, dt in self.spec})

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        import objax

        objax.io.load_var_collection(path, template)
        _block([v.value for v in template.values()])
        return template

    def as_numpy(self, restored: Any) -> Mapping[str, Any]:
        bf16 = _bf16_names(self.spec)
        return {n: np.asarray(v.value).view(_model.dtype_of("bfloat16")) if n in bf16 else np.asarray(v.value)
                for n, v in restored.items()}


class Orbax(Tool):
    key = "orbax"
    label = "orbax StandardCheckpointer"
    needs = ("jax", "orbax.checkpoint")
    name = "model.orbax"
    note = ("ocp.StandardCheckpointer().save(dir, tree) + wait_until_finished() (tensorstore OCDBT, which "
            "fsyncs); restore(dir) into numpy arrays")

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import orbax.checkpoint as ocp

        ck = ocp.StandardCheckpointer()
        ck.save(path, obj)
        ck.wait_until_finished()
        ck.close()
        return {}

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        import orbax.checkpoint as ocp

        ck = ocp.StandardCheckpointer()
        out = ck.restore(path)
        ck.close()
        _block(list(out.values()))
        return out

    def as_numpy(self, restored: Any) -> Mapping[str, Any]:
        return {n: np.asarray(v) for n, v in restored.items()}


class Safetensors(Tool):
    key = "safetensors"
    label = "safetensors.numpy save_file / load_file"
    needs = ("safetensors.numpy",)
    name = "model.safetensors"
    note = "safetensors.numpy.save_file + fsync; load_file (copies into numpy)"
    _bf16_native: bool | None = None

    def _native(self) -> bool:
        if Safetensors._bf16_native is None:
            import tempfile

            import safetensors.numpy as st

            try:
                with tempfile.TemporaryDirectory() as d:
                    p = os.path.join(d, "probe.safetensors")
                    st.save_file({"x": np.zeros(2, _model.dtype_of("bfloat16"))}, p)
                    ok = st.load_file(p)["x"].dtype == _model.dtype_of("bfloat16")
            except Exception:  # noqa: BLE001 - any failure means no native bfloat16
                ok = False
            Safetensors._bf16_native = ok
        return bool(Safetensors._bf16_native)

    def prepare(self, model: dict[str, np.ndarray]) -> Any:
        if self._native():
            return model
        bf16 = _bf16_names(self.spec)
        return {n: a.view(np.uint16) if n in bf16 else a for n, a in model.items()}

    def template(self) -> Any:
        self._native()  # probe once, before timing
        return None

    def save(self, path: str, obj: Any) -> dict[str, float]:
        import safetensors.numpy as st

        st.save_file(obj, path)
        _measure.fsync_tree(path)
        return {}

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        import safetensors.numpy as st

        out = st.load_file(path)
        if not self._native():
            bf16 = _bf16_names(self.spec)
            out = {n: a.view(_model.dtype_of("bfloat16")) if n in bf16 else a for n, a in out.items()}
        return out


class Pickle(Tool):
    key = "pickle"
    label = "pickle dump/load (protocol 5)"
    name = "model.pkl"
    note = "pickle.dump(dict of numpy arrays, f, protocol=5) + fsync; pickle.load"

    def save(self, path: str, obj: Any) -> dict[str, float]:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        _measure.fsync_dir(os.path.dirname(path))
        return {}

    def restore(self, path: str, template: Any) -> Mapping[str, Any]:
        with open(path, "rb") as f:
            return pickle.load(f)


TOOLS: list[type[Tool]] = [Raw, RawAlloc, Raw1Core, Ckpt, CkptViews, CkptObjax, CkptNoVerify, CkptNoHash, CkptSha256,
                           Ckpt1Core, CkptJaxSync, CkptJaxAsync, CkptNpSync, CkptNpAsync, Npz, Objax, Orbax,
                           Safetensors, Pickle]
BY_KEY = {t.key: t for t in TOOLS}

#: Tools that users would otherwise pick (the "peers" of the targets).
PEERS = ["npz", "objax", "orbax", "safetensors", "pickle"]
