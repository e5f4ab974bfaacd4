"""Replay every crash state of one ``Checkpoint.save`` under a POSIX durability model.

A recording :class:`ckpt._io.FileOps` performs and logs each operation of one
save and its rotation: ``open_temp`` (a new directory entry and a new inode),
each write/seek/truncate of the temp file, ``fsync(file)``, ``replace``,
``fsync_dir`` and ``unlink``. A crash after any prefix of that list is then
modelled as:

* file data is durable only after ``fsync`` of that file; before it the crashed
  inode may hold nothing, a prefix of the writes made so far, or all of them;
* a directory change (create, rename, unlink) is durable only after
  ``fsync_dir`` of its directory; before it each pending change may or may not
  have reached the disk (every subset is enumerated, applied in program order).

Each (prefix, namespace subset, data variant) is materialized in a fresh
directory, starting from a copy of the directory before the save, and checked:
``restore()`` loads the newest checkpoint present without any fallback, it is
the old latest or the new one (the new one once the save's rename was made
durable), its content is exact, and every final-named file verifies fully.

The same model run over deliberately broken protocols (no file fsync; no
directory fsync) must find failing states: the checker is not vacuous.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt import _io
from ckpt.errors import CorruptCheckpointWarning

LOCK = ckpt.Checkpoint.LOCK_NAME


def is_final(name: str) -> bool:
    """A final checkpoint name as Checkpoint.path() makes it ('0000000007.npz')."""
    m = re.fullmatch(r"(\d+)\.npz", name)
    return m is not None and name == ckpt.Checkpoint.FILE_FORMAT % int(m.group(1))


# -- recording layer -----------------------------------------------------------
class RecordingFile:
    """A temp file whose writes, seeks and truncates are logged as (op, offset/size, bytes)."""

    def __init__(self, f: Any, log: list, inode: str):
        self._f = f
        self.log = log
        self.inode = inode

    def write(self, data: Any) -> int:
        offset = self._f.tell()
        data = bytes(memoryview(data).cast("B"))
        n = self._f.write(data)
        self.log.append(("write", offset, data[:n]))
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._f.tell() if size is None else size
        result = self._f.truncate(size)
        self.log.append(("truncate", size, b""))
        return result

    def seek(self, *args: Any) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()

    def __getattr__(self, name: str) -> Any:  # flush, fileno, close, seekable, name, ...
        return getattr(self._f, name)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def apply_writes(log: list, upto: int) -> bytes:
    """The file content after the first ``upto`` logged writes/truncates (holes read as zeros)."""
    buf = bytearray()
    for op, pos, data in log[:upto]:
        if op == "write":
            if len(buf) < pos:
                buf.extend(b"\0" * (pos - len(buf)))
            buf[pos:pos + len(data)] = data
        else:
            del buf[pos:]
            if len(buf) < pos:
                buf.extend(b"\0" * (pos - len(buf)))
    return bytes(buf)


class Recorder(_io.FileOps):
    """Performs every operation for real and logs it (only once it succeeded)."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.writes: dict[str, list] = {}
        self._inode_of: dict[str, str] = {}  # current path -> inode, for the new files

    def open_temp(self, path: str) -> Any:
        f = super().open_temp(path)
        inode = f"new{len(self.writes)}"
        self.writes[inode] = []
        self._inode_of[path] = inode
        self.ops.append(("create", path, inode))
        return RecordingFile(f, self.writes[inode], inode)

    def fsync(self, f: Any) -> None:
        super().fsync(f)
        self.ops.append(("fsync", f.inode, len(f.log)))

    def replace(self, src: str, dst: str) -> None:
        super().replace(src, dst)
        self.ops.append(("replace", src, dst))

    def fsync_dir(self, directory: str) -> None:
        super().fsync_dir(directory)
        self.ops.append(("fsync_dir", directory))

    def unlink(self, path: str) -> None:
        super().unlink(path)
        self.ops.append(("unlink", path))


class NoFsyncRecorder(Recorder):
    """A broken protocol: fsync(file) does nothing, so file data is never durable."""

    def fsync(self, f: Any) -> None:
        pass


class NoDirFsyncRecorder(Recorder):
    """A broken protocol: fsync_dir does nothing, so no rename or unlink is ever durable."""

    def fsync_dir(self, directory: str) -> None:
        pass


# -- the scenario: checkpoints before, one recorded save -------------------------
def arrays_for(step: int, incremental: bool = False) -> dict[str, np.ndarray]:
    # Small members are written in one go; "emb" (over 256 KiB) is streamed and its header patched after.
    out = {"w": np.full((16, 16), step, np.float32), "b": np.arange(40, dtype=np.int64) * step + 7,
           "emb": np.arange(80_000, dtype=np.float32) * step}
    if incremental:  # incremental saves: "emb" is a new shared object each step, "frozen" one for every step
        out["frozen"] = np.arange(30_000, dtype=np.float32) - 5
    return out


def save_step(ck: ckpt.Checkpoint, step: int) -> str:
    return ck.save(arrays_for(step, ck.incremental is not None), idx=step, extras={"meta": {"step": step}})


@dataclass
class Recording:
    keep: int
    old: list[int]  # checkpoints before the save
    new: int
    pre: dict[str, bytes]  # the directory before the save (names -> content), lock file excluded
    ops: list[tuple]
    writes: dict[str, list]
    directory: str
    after: dict[str, bytes]  # the real directory after the save
    incremental: bool = False


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def snapshot_dir(directory: str) -> dict[str, bytes]:
    """Every file below ``directory`` (the lock excepted), by its ``/``-separated relative name."""
    out = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            rel = relname(os.path.join(root, name), directory)
            if rel != LOCK:
                with open(os.path.join(root, name), "rb") as f:
                    out[rel] = f.read()
    return out


def relname(path: str, directory: str) -> str:
    """``path`` relative to the checkpoint directory, ``/``-separated ("" for the directory itself)."""
    rel = os.path.relpath(os.path.abspath(path), directory).replace(os.sep, "/")
    return "" if rel == "." else rel


def parent(name: str) -> str:
    return name.rpartition("/")[0]


def record_save(tmp_path, monkeypatch, *, keep: int, before: int, stale_temp: bool = False,
                recorder_cls: type = Recorder, incremental: bool = False) -> Recording:
    logdir = str(tmp_path / "recorded")
    ck = ckpt.Checkpoint(logdir, keep_ckpts=keep, verbose=False, incremental=incremental)
    for step in range(1, before + 1):
        save_step(ck, step)
    if stale_temp:  # a partial temp left by a writer that was killed: the save removes it first
        name = f".{os.path.basename(ck.path(before + 1))}.{dead_pid()}.0badc0de.tmp"
        with open(os.path.join(ck.directory, name), "wb") as f:
            f.write(b"PK\x03\x04 partial")
    pre = snapshot_dir(ck.directory)
    recorder = recorder_cls()
    monkeypatch.setattr(_io, "ops", recorder)
    save_step(ck, before + 1)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    return Recording(keep, list(range(1, before + 1)), before + 1, pre, recorder.ops, recorder.writes,
                     ck.directory, snapshot_dir(ck.directory), incremental)


# -- the durability model ----------------------------------------------------------
@dataclass
class CrashState:
    prefix: int  # how many recorded operations happened before the crash
    label: str
    files: dict[str, bytes]
    save_returned_durably: bool  # the save's rename had been made durable (or the save returned)
    tags: set[str] = field(default_factory=set)


PAGE = 4096


def _data_variants(log: list, synced_upto: int | None, upto: int, few: bool = False) -> list[tuple[str, bytes]]:
    """What a crashed inode may hold: its synced content; else empty, partial, or all writes so far.

    Partial contents are the file after each prefix of its writes (in program order), and the full
    content torn the way page write-back can tear it: cut at a byte offset, or with one 4 KiB page
    never written (zeros).
    """
    if synced_upto is not None:
        return [("synced", apply_writes(log, synced_upto))]
    out, seen = [], set()

    def add(kind: str, content: bytes) -> None:
        if content not in seen:
            seen.add(content)
            out.append((kind, content))

    for j in (sorted({0, upto // 2, upto}) if few else range(upto + 1)):
        add("empty" if j == 0 else ("fully written, not synced" if j == upto else f"partial ({j}/{upto} writes)"),
            apply_writes(log, j))
    full = apply_writes(log, upto)
    if few:
        return out
    for frac in (4, 2):
        add(f"partial (cut at 1/{frac} of {len(full)} bytes)", full[:len(full) // frac])
    add("partial (cut 1 byte short)", full[:-1])
    for page in sorted({0, len(full) // PAGE // 2, (len(full) - 1) // PAGE}):
        lo, hi = page * PAGE, min(len(full), (page + 1) * PAGE)
        add(f"partial (page {page} not written)", full[:lo] + b"\0" * (hi - lo) + full[hi:])
    return out


def crash_states(rec: Recording, few: bool = False) -> list[CrashState]:
    """Every crash state the model allows after every prefix of ``rec.ops``."""
    directory = rec.directory
    for op in rec.ops:  # everything happens in the checkpoint directory (or its objects folders)
        if op[0] == "fsync_dir":
            assert not relname(op[1], directory).startswith(".."), op
        elif op[0] != "fsync":
            for p in ([op[1], op[2]] if op[0] == "replace" else [op[1]]):
                assert not relname(p, directory).startswith(".."), op
            if op[0] == "replace":  # renames never cross folders
                assert os.path.dirname(op[1]) == os.path.dirname(op[2]), op

    def rel(path: str) -> str:
        return relname(path, directory)

    # The new checkpoint's rename: the one in the checkpoint directory itself (objects live below it).
    replace_at = [i for i, op in enumerate(rec.ops) if op[0] == "replace" and parent(rel(op[2])) == ""]
    durable_after = None  # prefix length from which the new checkpoint's rename is durable
    if replace_at:
        later = [i for i, op in enumerate(rec.ops)
                 if op[0] == "fsync_dir" and i > replace_at[0] and rel(op[1]) == ""]
        durable_after = later[0] + 1 if later else None

    states = []
    for k in range(len(rec.ops) + 1):
        durable_ns = {name: ("old", name) for name in rec.pre}
        pending: list[tuple] = []
        inode_at: dict[str, tuple] = dict(durable_ns)  # the live namespace, to resolve renames
        synced: dict[str, int] = {}
        for op in rec.ops[:k]:
            kind = op[0]
            if kind == "create":
                name = rel(op[1])
                inode_at[name] = ("new", op[2])
                pending.append(("create", name, ("new", op[2])))
            elif kind == "replace":
                src, dst = rel(op[1]), rel(op[2])
                inode = inode_at.pop(src)
                inode_at[dst] = inode
                pending.append(("replace", src, dst, inode))
            elif kind == "unlink":
                name = rel(op[1])
                inode_at.pop(name, None)
                pending.append(("unlink", name))
            elif kind == "fsync_dir":  # makes the pending changes of that one folder durable
                folder = rel(op[1])
                for p in pending:
                    if parent(p[1]) == folder:
                        _apply(durable_ns, p)
                pending = [p for p in pending if parent(p[1]) != folder]
            elif kind == "fsync":
                synced[op[1]] = op[2]
        writes_so_far = {ino: _writes_before(rec, ino, k) for ino in rec.writes}
        for mask in itertools.product((False, True), repeat=len(pending)):
            ns = dict(durable_ns)
            for chosen, p in zip(mask, pending):
                if chosen:
                    _apply(ns, p)
            new_inodes = sorted({ino[1] for ino in ns.values() if ino[0] == "new"})
            variant_lists = [
                [(ino, kind, content) for kind, content in
                 _data_variants(rec.writes[ino], synced.get(ino), writes_so_far[ino], few)]
                for ino in new_inodes
            ]
            for combo in itertools.product(*variant_lists):
                data = {ino: (kind, content) for ino, kind, content in combo}
                files = {}
                for name, ino in ns.items():
                    files[name] = rec.pre[ino[1]] if ino[0] == "old" else data[ino[1]][1]
                last = rec.ops[k - 1][0] if k else "nothing"
                ns_desc = ", ".join(f"{_desc(p)}: {'on disk' if c else 'lost'}" for c, p in zip(mask, pending))
                data_desc = "; ".join(f"{ino} data {kind}" for ino, (kind, _) in data.items())
                tags = set()
                for c, p in zip(mask, pending):
                    if p[0] == "replace":
                        tags.add("rename done, directory not fsynced" + (" (rename on disk)" if c else
                                                                         " (rename lost)"))
                for kind, _ in data.values():
                    if kind != "synced":
                        tags.add("data not synced")
                        tags.add(f"data {kind.split(' (')[0]}")
                states.append(CrashState(
                    k, f"crash after {k} ops (last: {last}); pending [{ns_desc or 'none'}]; {data_desc or 'no new data'}",
                    files,
                    save_returned_durably=(k == len(rec.ops)) or (durable_after is not None and k >= durable_after),
                    tags=tags,
                ))
    return states


def _writes_before(rec: Recording, inode: str, k: int) -> int:
    """How many of ``inode``'s logged writes may have happened in a crash after ``k`` ops.

    The writes happen between ``open_temp`` and the next recorded operation, so a crash after the
    ``open_temp`` may come after any number of them (the data variants then range over 0..all).
    """
    created = [i for i, op in enumerate(rec.ops) if op[0] == "create" and op[2] == inode]
    return len(rec.writes[inode]) if created and created[0] < k else 0


def _apply(ns: dict, p: tuple) -> None:
    if p[0] == "create":
        ns[p[1]] = p[2]
    elif p[0] == "replace":
        ns.pop(p[1], None)
        ns[p[2]] = p[3]
    else:
        ns.pop(p[1], None)


def _desc(p: tuple) -> str:
    if p[0] == "replace":
        return f"rename {p[1]} -> {p[2]}"
    return f"{p[0]} {p[1]}"


# -- the checker -------------------------------------------------------------------------
def check_state(state: CrashState, rec: Recording, root: str) -> list[str]:
    """Materialize ``state`` under ``root`` and list what is wrong with it (empty list: fine)."""
    logdir = os.path.join(root, "logdir")
    directory = os.path.join(logdir, ckpt.Checkpoint.DIR_NAME)
    os.makedirs(directory)
    for name, content in state.files.items():
        os.makedirs(os.path.join(directory, parent(name)), exist_ok=True)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)
    ck = ckpt.Checkpoint(logdir, keep_ckpts=rec.keep, verbose=False)
    problems = []
    indices = ck.indices()
    final_names = {n for n in state.files if is_final(n)}
    if {os.path.basename(ck.path(i)) for i in indices} != final_names:
        problems.append(f"indices() {indices} do not match the final-named files {sorted(final_names)}")
    for i in indices:
        try:
            with ckpt.Pack(ck.path(i)) as pack:
                pack.verify()
                meta = pack.load("meta")
            stored = ck.load(i)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            problems.append(f"final-named file {os.path.basename(ck.path(i))} is partial or unverifiable: "
                            f"{type(e).__name__}: {e}")
            continue
        if meta != {"step": i} or any(not np.array_equal(stored[n], a)
                                      for n, a in arrays_for(i, rec.incremental).items()):
            problems.append(f"final-named file for step {i} holds the wrong content")
    target = {n: np.zeros_like(a) for n, a in arrays_for(rec.new, rec.incremental).items()}
    extras = {"meta": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            idx, _path = ck.restore(target, extras=extras)
        except Exception as e:  # noqa: BLE001
            problems.append(f"restore() failed: {type(e).__name__}: {e}")
            return problems
    for w in caught:
        kind = "needed a fallback" if issubclass(w.category, CorruptCheckpointWarning) else "warned"
        problems.append(f"restore() {kind}: {w.message}")
    latest_old = rec.old[-1] if rec.old else None
    if idx == 0:
        if latest_old is not None or state.save_returned_durably:
            problems.append("no checkpoint at all: the last good checkpoint was lost")
        return problems
    if idx not in (latest_old, rec.new):
        problems.append(f"restored checkpoint {idx}; expected the old latest {latest_old} or the new {rec.new}")
    if indices and idx != indices[-1]:
        problems.append(f"restored {idx} but the newest final-named checkpoint is {indices[-1]}")
    if state.save_returned_durably and idx != rec.new:
        problems.append(f"the save of {rec.new} was made durable, yet {idx} was restored")
    if extras["meta"] != {"step": idx} or any(not np.array_equal(target[n], a)
                                              for n, a in arrays_for(idx, rec.incremental).items()):
        problems.append(f"restored content is not checkpoint {idx}'s")
    if rec.incremental and not problems:
        problems += _check_next_incremental_save(ck, logdir, rec)
    return problems


def _check_next_incremental_save(ck: ckpt.Checkpoint, logdir: str, rec: Recording) -> list[str]:
    """After a crash, the next incremental save works, and its collection keeps exactly the objects
    the kept checkpoints refer to (orphans of the crashed save are removed, nothing needed is)."""
    from ckpt.incremental._refs import file_references

    resumed = ckpt.Checkpoint(logdir, keep_ckpts=rec.keep, verbose=False, incremental=True)
    step = (resumed.latest() or 0) + 1
    try:
        save_step(resumed, step)
        kept = resumed.indices()
        needed = set().union(*(file_references(resumed.path(i)) for i in kept))
        for i in kept:
            stored = resumed.load(i)
            if any(not np.array_equal(stored[n], a) for n, a in arrays_for(i, True).items()):
                return [f"after the next save, checkpoint {i} holds the wrong content"]
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        return [f"the next incremental save or a load after it failed: {type(e).__name__}: {e}"]
    # Temp files of the crashed save carry this test process's pid, so they count as a live writer's here;
    # removing a dead writer's temp is the stale-temp scenario's check.
    present = {n for n in snapshot_dir(resumed.directory)
               if n.startswith("objects/") and not os.path.basename(n).startswith(".")}
    if present != needed:
        return [f"after the next save the objects folder holds {sorted(present - needed)} unreferenced and lacks "
                f"{sorted(needed - present)}"]
    return []


def run_model(rec: Recording, tmp_path, few: bool = False
              ) -> tuple[list[CrashState], list[tuple[CrashState, list[str]]]]:
    states = crash_states(rec, few)
    failures = []
    root = tmp_path / "states"
    for n, state in enumerate(states):
        where = str(root / str(n))
        problems = check_state(state, rec, where)
        shutil.rmtree(where)
        if problems:
            failures.append((state, problems))
    return states, failures


def _format_failures(failures: list, limit: int = 5) -> str:
    return "\n".join(f"- {s.label}:\n    " + "\n    ".join(p) for s, p in failures[:limit])


# -- tests -------------------------------------------------------------------------------
SCENARIOS = {
    # keep 3, save 4: rotation deletes checkpoint 1
    "keep3_rotate": {"keep": 3, "before": 3},
    # keep 1: the only old checkpoint is deleted by the save's own rotation
    "keep1_replace_only_checkpoint": {"keep": 1, "before": 1},
    # keep 2, with a partial temp of a dead writer that the save removes first
    "keep2_stale_temp": {"keep": 2, "before": 2, "stale_temp": True},
    # the very first save of a run: nothing to fall back to
    "first_save": {"keep": 2, "before": 0},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_crash_state_of_a_save_restores_a_complete_checkpoint(scenario, tmp_path, monkeypatch):
    params = SCENARIOS[scenario]
    rec = record_save(tmp_path, monkeypatch, **params)

    # The recording is faithful: replaying it with everything durable gives the real directory.
    end = [s for s in crash_states(rec) if s.prefix == len(rec.ops)]
    assert len(end) == 1 and not end[0].tags, [s.label for s in end]
    assert end[0].files == rec.after, "the model's end state differs from the real directory"
    kinds = [op[0] for op in rec.ops]
    assert kinds.count("create") == 1 and kinds.count("fsync") == 1 and kinds.count("replace") == 1, kinds
    # The ordering that makes it safe: data fsynced before the rename, the rename made durable before
    # any old checkpoint is deleted.
    assert kinds.index("fsync") < kinds.index("replace"), kinds
    unlink_finals = [i for i, op in enumerate(rec.ops)
                     if op[0] == "unlink" and not os.path.basename(op[1]).startswith(".")]
    assert len(unlink_finals) == max(0, params["before"] + 1 - params["keep"]), rec.ops
    if unlink_finals:
        assert "fsync_dir" in kinds[kinds.index("replace"):unlink_finals[0]], kinds
    if params.get("stale_temp"):
        assert kinds[0] == "unlink" and os.path.basename(rec.ops[0][1]).endswith(".tmp"), rec.ops

    states, failures = run_model(rec, tmp_path)
    print(f"{scenario}: {len(rec.ops)} ops {kinds}, {sum(len(w) for w in rec.writes.values())} writes, "
          f"{len(states)} crash states checked, {len(failures)} bad")
    assert not failures, f"{len(failures)} of {len(states)} crash states are bad:\n{_format_failures(failures)}"
    # The enumeration covers the states that matter, not only the end state.
    tags = set().union(*(s.tags for s in states))
    for wanted in ("rename done, directory not fsynced (rename on disk)",
                   "rename done, directory not fsynced (rename lost)",
                   "data not synced", "data empty", "data partial", "data fully written, not synced"):
        assert wanted in tags, (wanted, sorted(tags))
    # At least every prefix of the file's writes (small members are one write each), the torn variants
    # and the namespace states around the rename.
    writes = sum(len(w) for w in rec.writes.values())
    assert writes >= 10 and len(states) >= writes + 15, (writes, len(states))


INCREMENTAL_SCENARIOS = {
    # keep 2, save 3: rotation deletes checkpoint 1, then its "emb" object; "frozen" stays shared
    "incremental_keep2_rotate_and_collect": {"keep": 2, "before": 2},
    # keep 1: the only old checkpoint and the objects only it used go in the save's own rotation
    "incremental_keep1": {"keep": 1, "before": 1},
    # a partial object temp left by a killed writer (removed by the collection)
    "incremental_stale_object_temp": {"keep": 3, "before": 1, "stale_temp": True},
}


@pytest.mark.parametrize("scenario", list(INCREMENTAL_SCENARIOS))
def test_every_crash_state_of_an_incremental_save_and_collection_restores(scenario, tmp_path, monkeypatch):
    """Incremental saves: shared objects are durable (data and names) before the checkpoint that
    refers to them is renamed, and an object is deleted only after every file referring to it is."""
    params = dict(INCREMENTAL_SCENARIOS[scenario])
    stale = params.pop("stale_temp", False)
    if stale:
        pre_dir = tmp_path / "recorded" / "ckpt" / "objects" / "blake3"
        pre_dir.mkdir(parents=True)
        (pre_dir / f".object.npy.{dead_pid()}.0badc0de.tmp").write_bytes(b"\x93NUMPY partial")
    rec = record_save(tmp_path, monkeypatch, incremental=True, **params)
    end = [s for s in crash_states(rec) if s.prefix == len(rec.ops)]
    assert len(end) == 1 and end[0].files == rec.after, "the model's end state differs from the real directory"
    ops = rec.ops
    rel = [relname(op[1], rec.directory) if op[0] != "fsync" else "" for op in ops]
    step_rename = next(i for i, op in enumerate(ops) if op[0] == "replace" and "/" not in rel[i])
    object_renames = [i for i, op in enumerate(ops) if op[0] == "replace" and rel[i].startswith("objects/")]
    assert len(object_renames) == 1, ops  # "emb" is new; "frozen" is found by digest and not written
    # The new object's name is durable before the checkpoint that refers to it is renamed.
    assert any(ops[j][0] == "fsync_dir" and rel[j] == "objects/blake3"
               for j in range(object_renames[0], step_rename)), ops
    object_unlinks = [i for i, op in enumerate(ops) if op[0] == "unlink" and rel[i].startswith("objects/")
                      and not os.path.basename(rel[i]).startswith(".")]
    step_unlinks = [i for i, op in enumerate(ops) if op[0] == "unlink" and "/" not in rel[i]
                    and not rel[i].startswith(".")]
    assert len(step_unlinks) == max(0, params["before"] + 1 - params["keep"]), ops
    assert len(object_unlinks) == len(step_unlinks), ops  # each deleted step's own "emb" object, no more
    for i in object_unlinks:  # only once the deletion of the files referring to it is durable
        assert any(ops[j][0] == "fsync_dir" and rel[j] == "" for j in range(max(step_unlinks), i)), ops
    if stale:
        assert any(op[0] == "unlink" and rel[i].endswith(".tmp") for i, op in enumerate(ops)), ops

    states, failures = run_model(rec, tmp_path)
    print(f"{scenario}: {len(ops)} ops {[op[0] for op in ops]}, {len(states)} crash states checked, "
          f"{len(failures)} bad")
    assert not failures, f"{len(failures)} of {len(states)} crash states are bad:\n{_format_failures(failures)}"
    assert len(states) > 2 * len(ops), len(states)


def test_named_crash_states_give_the_expected_checkpoint(tmp_path, monkeypatch):
    """Spot checks of two states by name, with the checkpoint each must give."""
    rec = record_save(tmp_path, monkeypatch, keep=3, before=3)
    states = crash_states(rec)
    replace_at = next(i for i, op in enumerate(rec.ops) if op[0] == "replace")
    fsync_at = next(i for i, op in enumerate(rec.ops) if op[0] == "fsync")
    new_name = os.path.basename(rec.ops[replace_at][2])
    old_name = os.path.basename(ckpt.Checkpoint("x", makedir=False).path(rec.old[-1]))

    # Rename done but the directory not fsynced: the rename may be on disk (new checkpoint, complete
    # because its data were synced first) or lost (old latest, temp file left beside it).
    after_rename = [s for s in states if s.prefix == replace_at + 1]
    on_disk = [s for s in after_rename if "rename done, directory not fsynced (rename on disk)" in s.tags]
    lost = [s for s in after_rename if "rename done, directory not fsynced (rename lost)" in s.tags]
    assert on_disk and lost
    for s, expect in [(s, rec.new) for s in on_disk] + [(s, rec.old[-1]) for s in lost]:
        assert (new_name in s.files) == (expect == rec.new), s.label
        assert not check_state(s, rec, str(tmp_path / "one")), s.label
        ck = ckpt.Checkpoint(str(tmp_path / "one" / "logdir"), verbose=False)
        assert ck.restore({n: np.zeros_like(a) for n, a in arrays_for(expect).items()})[0] == expect, s.label
        shutil.rmtree(tmp_path / "one")

    # Data written but not synced (crash just before the fsync): the temp may be empty or partial;
    # no final-named file for the new step exists, so the old latest is restored.
    unsynced = [s for s in states if s.prefix == fsync_at and "data not synced" in s.tags]
    assert {"data empty", "data fully written, not synced"} <= set().union(*(s.tags for s in unsynced))
    for s in unsynced:
        assert new_name not in s.files and old_name in s.files, s.label
        assert any(n.endswith(".tmp") for n in s.files), s.label
        assert not check_state(s, rec, str(tmp_path / "two")), s.label
        shutil.rmtree(tmp_path / "two")


def test_model_catches_a_protocol_without_file_fsync(tmp_path, monkeypatch):
    """With fsync(file) a no-op, a crash after the rename can leave an empty/partial final-named file."""
    rec = record_save(tmp_path, monkeypatch, keep=3, before=3, recorder_cls=NoFsyncRecorder)
    assert "fsync" not in [op[0] for op in rec.ops]
    states, failures = run_model(rec, tmp_path, few=True)  # empty, half-written, fully written
    partial_final = [(s, p) for s, p in failures if any("final-named file" in x and "partial" in x for x in p)]
    assert partial_final, f"the checker missed the unsynced rename ({len(states)} states)"
    assert any(any("needed a fallback" in x for x in p) for _, p in failures)
    print(f"no-fsync protocol: {len(states)} crash states, {len(failures)} flagged, e.g.\n"
          f"{_format_failures(partial_final, 1)}")


def test_model_catches_a_protocol_without_directory_fsync(tmp_path, monkeypatch):
    """With fsync_dir a no-op, keep_ckpts=1 can durably delete the old checkpoint but lose the rename."""
    rec = record_save(tmp_path, monkeypatch, keep=1, before=1, recorder_cls=NoDirFsyncRecorder)
    assert "fsync_dir" not in [op[0] for op in rec.ops]
    states, failures = run_model(rec, tmp_path, few=True)
    lost = [(s, p) for s, p in failures if any("no checkpoint at all" in x for x in p)]
    assert lost, f"the checker missed the lost checkpoint ({len(states)} states)"
    not_durable = [(s, p) for s, p in failures if any("was made durable, yet" in x for x in p)]
    assert not_durable, "the checker missed a returned save that was not durable"
    print(f"no-dir-fsync protocol: {len(states)} crash states, {len(failures)} flagged, e.g.\n"
          f"{_format_failures(lost, 1)}")


class NoObjectDirFsyncRecorder(Recorder):
    """A broken incremental protocol: the objects folders are never fsynced, so a new object's name
    may be lost while the checkpoint referring to it survives."""

    def fsync_dir(self, directory: str) -> None:
        if os.sep + "objects" not in os.path.abspath(directory):
            super().fsync_dir(directory)


def test_model_catches_an_incremental_protocol_without_objects_fsync(tmp_path, monkeypatch):
    rec = record_save(tmp_path, monkeypatch, keep=3, before=1, incremental=True,
                      recorder_cls=NoObjectDirFsyncRecorder)
    states, failures = run_model(rec, tmp_path, few=True)
    missing = [(s, p) for s, p in failures if any("shared object" in x and "missing" in x for x in p)]
    assert missing, f"the checker missed the lost object name ({len(states)} states)"
    print(f"no-objects-fsync protocol: {len(states)} crash states, {len(failures)} flagged, e.g.\n"
          f"{_format_failures(missing, 1)}")


@pytest.mark.parametrize("logdir_exists", [True, False], ids=["existing_logdir", "new_logdir"])
def test_first_save_into_new_directories_is_durable_when_save_returns(logdir_exists, tmp_path, monkeypatch):
    """The model applied to directory creation: a new directory's entry is durable only after its parent's fsync."""
    logdir = tmp_path / "runs" / "exp1"
    if logdir_exists:
        logdir.mkdir(parents=True)
    recorder = Recorder()
    real_mkdir = os.mkdir

    def recording_mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        recorder.ops.append(("mkdir", os.path.abspath(path)))

    monkeypatch.setattr(os, "mkdir", recording_mkdir)
    monkeypatch.setattr(_io, "ops", recorder)
    ck = ckpt.Checkpoint(str(logdir), keep_ckpts=2, verbose=False)
    path = save_step(ck, 1)
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    monkeypatch.setattr(_io, "ops", _io.FileOps())

    created = [(i, op[1]) for i, op in enumerate(recorder.ops) if op[0] == "mkdir"]
    expected = ([] if logdir_exists else [str(tmp_path / "runs"), str(logdir)]) + [ck.directory]
    assert [d for _, d in created] == expected, recorder.ops
    # Directory entries still not durable when save() returned: no fsync_dir of the parent after the mkdir.
    not_durable = [d for i, d in created
                   if not any(op[0] == "fsync_dir" and os.path.abspath(op[1]) == os.path.dirname(d)
                              for op in recorder.ops[i + 1:])]
    if not_durable:
        # The crash state this allows: the outermost new directory's entry never reached the disk.
        crash = tmp_path / "crash"
        shutil.copytree(tmp_path / "runs", crash / "runs")
        shutil.rmtree(crash / os.path.relpath(not_durable[0], tmp_path))
        lost = ckpt.Checkpoint(str(crash / "runs" / "exp1"), makedir=False, verbose=False)
        assert lost.latest() is None and lost.restore({}) == (0, "")  # checkpoint 1 is gone
    assert not not_durable, (f"save() of {path} returned, but the entries of {not_durable} in their parent "
                             f"directories were never fsynced: ops {[op[:2] for op in recorder.ops]}")
