"""Adapters between what users checkpoint and a flat list of named arrays, and back.

Three kinds of collection are understood: an objax ``VarCollection`` (shared
variables and ``TrainRef``s stored once, under their first name, as objax does),
a dict of name -> array, and any JAX pytree (names from key paths joined with
``/``). Frameworks are imported only when the value in hand comes from them, so
this module works with numpy alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from . import _tagged
from .errors import FormatError, MismatchError

Renamer = Union[Callable[[str], str], Mapping[str, str], None]


def _objax() -> Any:
    return sys.modules.get("objax")


def _jax() -> Any:
    return sys.modules.get("jax")


def is_var_collection(obj: Any) -> bool:
    objax = _objax()
    return objax is not None and isinstance(obj, objax.VarCollection)


def is_jax_array(x: Any) -> bool:
    jax = _jax()
    return jax is not None and isinstance(x, jax.Array)


def is_array(x: Any) -> bool:
    """An array-like leaf that can be stored as .npy data (no object dtype)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return not np.asarray(x).dtype.hasobject
    return is_jax_array(x)


def is_typed_key(x: Any) -> bool:
    """A new-style typed JAX PRNG key array (``jax.random.key``), stored as its raw key data."""
    jax = _jax()
    if jax is None or not hasattr(x, "dtype") or isinstance(x.dtype, np.dtype):
        return False  # numpy dtypes (ml_dtypes' included) are never key types: the cheap common case
    try:
        return bool(jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
    except (TypeError, AttributeError):
        return False


def key_impl_name(key: Any) -> str:
    """The name ``jax.random.wrap_key_data(impl=...)`` accepts for a typed key's implementation."""
    impl = _jax().random.key_impl(key)
    return str(getattr(impl, "name", impl))


def wrap_key(data: np.ndarray, impl: str, *, where: str) -> Any:
    """A typed PRNG key from stored key data (plain uint32 data when JAX is not installed)."""
    jax = _jax()
    if jax is None:
        return data
    try:
        return jax.random.wrap_key_data(np.array(data), impl=impl)
    except (ValueError, TypeError, KeyError) as e:
        raise FormatError(f"{where}: cannot rebuild a {impl!r} PRNG key from data of shape {data.shape}: {e}") from None


def is_abstract(x: Any) -> bool:
    """A ``jax.ShapeDtypeStruct`` leaf: a shape, dtype and sharding with no data."""
    jax = _jax()
    return jax is not None and isinstance(x, jax.ShapeDtypeStruct)


def storable(leaf: Any) -> Any:
    """The array that represents a leaf on disk (typed keys become their uint32 key data)."""
    if is_typed_key(leaf):
        return _jax().random.key_data(leaf)
    return leaf


def shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a leaf as stored (a typed key or an abstract key: its key data's)."""
    if isinstance(leaf, np.generic):
        return (), leaf.dtype
    if is_typed_key(leaf):
        data = _jax().eval_shape(_jax().random.key_data, leaf)
        return tuple(int(s) for s in data.shape), np.dtype(data.dtype)
    return tuple(int(s) for s in leaf.shape), np.dtype(leaf.dtype)


def to_host(leaf: Any) -> np.ndarray:
    """A numpy array with the leaf's data: numpy arrays as they are, device arrays copied once."""
    if isinstance(leaf, np.ndarray):
        return leaf
    return np.asarray(storable(leaf))


@dataclass
class Flat:
    names: list[str]
    leaves: list[Any]
    kind: str  # "array" | "scalar" | "dict" | "tree" | "varcollection"
    tree: Any = None
    frameworks: set[str] = field(default_factory=set)

    def leaf_info(self, i: int) -> dict[str, Any]:
        """Extra facts the manifest records about leaf ``i`` (a typed key's implementation)."""
        leaf = self.leaves[i]
        return {"key_impl": key_impl_name(leaf)} if is_typed_key(leaf) else {}


def _frameworks_of(leaves: list[Any]) -> set[str]:
    return {"jax", "jaxlib"} if any(is_jax_array(x) for x in leaves) else set()


def _var_collection_items(vc: Any) -> list[tuple[list[str], Any]]:
    """(names, variable) per distinct variable, TrainRefs resolved, in collection order."""
    objax = _objax()
    order: list[int] = []
    names: dict[int, list[str]] = {}
    var: dict[int, Any] = {}
    for k, v in vc.items():
        if isinstance(v, objax.TrainRef):
            v = v.ref
        key = id(v)
        if key not in names:
            order.append(key)
            names[key] = []
            var[key] = v
        names[key].append(k)
    return [(names[k], var[k]) for k in order]


def _key_name(k: Any) -> str:
    jtu = _jax().tree_util
    if isinstance(k, jtu.DictKey):
        return str(k.key)
    if isinstance(k, jtu.SequenceKey):
        return str(k.idx)
    if isinstance(k, jtu.GetAttrKey):
        return str(k.name)
    if isinstance(k, jtu.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def _is_value(obj: Any) -> bool:
    """A non-array leaf stored in the skeleton as tagged JSON (docs/FORMAT.md 3.1): a Python scalar,
    string or bytes (a plain ``int`` step, an epoch counter), or a set of them."""
    t = type(obj)
    return t in _VALUE_TYPES or (t in (set, frozenset) and _tagged.encodable(obj))


_VALUE_TYPES = (bool, int, float, complex, str, bytes)


def _flatten_tree(obj: Any, path: tuple[str, ...], names: list[str], leaves: list[Any],
                  value_names: Optional[list[str]] = None) -> Any:
    """Flatten plain containers natively and other pytree nodes through jax; return the skeleton."""
    if len(path) > _tagged.MAX_DEPTH:
        raise _NotArrays  # nested deeper than any reader accepts, or a container that holds itself
    if is_array(obj):
        names.append("/".join(path) if path else "array")
        leaves.append(obj)
        return len(leaves) - 1
    t = type(obj)
    if obj is None:
        return {"none": None}
    if _is_value(obj):
        if value_names is not None:
            value_names.append("/".join(path))
        return {"value": _tagged.encode(obj)}
    if t is dict:
        if not all(type(k) is str for k in obj):
            if not all(type(k) in _KEY_TYPES and _tagged.encodable(k) for k in obj):
                raise _NotArrays
            if len({str(k) for k in obj}) != len(obj):  # {1: a, "1": b}: no names to tell them apart
                raise _NotArrays
            return {"dict": [[_tagged.encode(k), _flatten_tree(v, path + (str(k),), names, leaves, value_names)]
                             for k, v in obj.items()]}
        return {"dict": [[k, _flatten_tree(v, path + (k,), names, leaves, value_names)] for k, v in obj.items()]}
    if t is list:
        return {"list": [_flatten_tree(v, path + (str(i),), names, leaves, value_names) for i, v in enumerate(obj)]}
    if t is tuple:
        return {"tuple": [_flatten_tree(v, path + (str(i),), names, leaves, value_names)
                          for i, v in enumerate(obj)]}
    jax = _jax()
    if jax is None:
        raise _NotArrays
    if isinstance(obj, Iterator):
        raise _NotArrays  # generators and iterators are never pytrees (and JAX warns about them)
    pairs, _ = jax.tree_util.tree_flatten_with_path(obj, is_leaf=lambda x: isinstance(x, Iterator))
    if len(pairs) == 1 and pairs[0][1] is obj:
        raise _NotArrays  # not a pytree node: an object that is not an array
    # A custom pytree node (optax state, equinox module, flax struct, dataclass): its array
    # leaves are stored, and so are plain values (a flax TrainState's int step); other leaves
    # (functions, objects) come back from the template. A node without any (optax's EmptyState)
    # is an empty subtree.
    pairs = [(k, leaf) for k, leaf in pairs if is_array(leaf) or _is_value(leaf)]
    nested: dict[str, Any] = {}
    for keypath, leaf in pairs:
        parts = [_key_name(k) for k in keypath]
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ValueError(f"pytree key path {'/'.join(parts)} collides with another leaf's name")
        if parts[-1] in d:
            raise ValueError(f"pytree key path {'/'.join(path + tuple(parts))} appears twice")
        d[parts[-1]] = leaf
    return _flatten_tree(nested, path, names, leaves, value_names)


_KEY_TYPES = (bool, int, float, complex, str, bytes, tuple, frozenset, type(None))


class _NotArrays(Exception):
    pass


def flatten(obj: Any) -> Optional[Flat]:
    """Named arrays of a collection, or None if ``obj`` is not a collection of arrays."""
    if is_var_collection(obj):
        items = _var_collection_items(obj)
        return Flat([n[0] for n, _ in items], [v.value for _, v in items], "varcollection",
                    frameworks={"objax", "jax", "jaxlib"})
    if isinstance(obj, np.generic) and is_array(obj):
        return Flat(["array"], [obj], "scalar")
    if is_array(obj):
        return Flat(["array"], [obj], "array", frameworks=_frameworks_of([obj]))
    if type(obj) is dict and all(type(k) is str for k in obj) and all(is_array(v) for v in obj.values()):
        leaves = list(obj.values())
        return Flat(list(obj.keys()), leaves, "dict", frameworks=_frameworks_of(leaves))
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return None
    names: list[str] = []
    leaves = []
    value_names: list[str] = []
    try:
        tree = _flatten_tree(obj, (), names, leaves, value_names)
    except _NotArrays:
        return None
    if not leaves:
        return None
    every = names + value_names
    if len(set(every)) != len(every):
        dup = sorted({n for n in every if every.count(n) > 1})
        raise ValueError(f"two leaves of the pytree get the same name: {dup[:5]}; rename the keys")
    return Flat(names, leaves, "tree", tree, _frameworks_of(leaves))


def unflatten_tree(skeleton: Any, leaves: list[Any], *, where: str, values: Optional[Mapping[str, Any]] = None
                   ) -> Any:
    """Rebuild the dict/list/tuple nesting recorded by :func:`flatten`; ``values`` (name -> value)
    replace the skeleton's own value leaves of those names (a template's, by the stored ones)."""
    def build(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, int) and not isinstance(node, bool):
            if not 0 <= node < len(leaves):
                raise FormatError(f"{where}: tree refers to array {node}, but there are {len(leaves)}")
            return leaves[node]
        if isinstance(node, dict) and len(node) == 1:
            (tag, body), = node.items()
            if tag == "none":
                return None
            if tag == "value":
                name = "/".join(path)
                return values[name] if values is not None and name in values else _tagged.decode(body, where)
            if tag == "dict" and isinstance(body, list):
                out = {}
                for k, v in body:
                    key = k if type(k) is str else _tagged.decode(k, where)
                    out[key] = build(v, path + (str(key),))
                return out
            if tag == "list" and isinstance(body, list):
                return [build(v, path + (str(i),)) for i, v in enumerate(body)]
            if tag == "tuple" and isinstance(body, list):
                return tuple(build(v, path + (str(i),)) for i, v in enumerate(body))
        raise FormatError(f"{where}: malformed tree skeleton node {node!r:.100}")

    try:
        return build(skeleton, ())
    except (TypeError, ValueError, RecursionError) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"{where}: malformed tree skeleton ({e})") from None


def tree_values(skeleton: Any, *, where: str) -> dict[str, Any]:
    """The value leaves of a stored skeleton by name (the names :func:`flatten` gives), decoded."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: tuple[str, ...], depth: int) -> None:
        if depth > 1000:
            raise FormatError(f"{where}: tree skeleton nested deeper than 1000")
        if not isinstance(node, dict) or len(node) != 1:
            return
        (tag, body), = node.items()
        if tag == "value":
            out["/".join(path)] = _tagged.decode(body, where)
        elif tag == "dict" and isinstance(body, list):
            for pair in body:
                if isinstance(pair, list) and len(pair) == 2:
                    key = pair[0] if type(pair[0]) is str else _tagged.decode(pair[0], where)
                    walk(pair[1], path + (str(key),), depth + 1)
        elif tag in ("list", "tuple") and isinstance(body, list):
            for i, v in enumerate(body):
                walk(v, path + (str(i),), depth + 1)

    walk(skeleton, (), 0)
    return out


# -- restoring ------------------------------------------------------------
@dataclass
class Target:
    """One thing in the target collection that takes one stored array."""

    names: list[str]
    shape: tuple[int, ...]
    dtype: np.dtype
    assign: Callable[[np.ndarray], None]
    #: Where the restored array goes (a jax Sharding), when the target says: lets a multi-process
    #: restore build each global array slice by slice instead of from a full host copy.
    sharding: Any = None


def _place_like(old: Any, arr: np.ndarray) -> Any:
    """A value of the same kind as ``old`` holding ``arr``: jax arrays keep their sharding."""
    if is_jax_array(old):
        jax = _jax()
        sharding = getattr(old, "sharding", None)
        return jax.device_put(arr, sharding) if sharding is not None else jax.numpy.asarray(arr)
    return np.array(arr)  # own, writable memory: ``arr`` may be a read-only view of a mapped file


def _var_assigner(var: Any, jnp: Any) -> Callable[[np.ndarray], None]:
    def assign(arr: np.ndarray) -> None:
        var.assign(jnp.asarray(arr), check=False)

    return assign


def _dict_target(d: dict, key: str) -> Target:
    old = d[key]
    shape, dtype = shape_dtype(old)

    def assign(arr: np.ndarray) -> None:
        current = d[key]
        if isinstance(current, np.ndarray) and current.flags.writeable and current.shape == arr.shape:
            np.copyto(current, arr)
        else:
            d[key] = _place_like(current, arr)

    return Target([key], shape, dtype, assign, getattr(old, "sharding", None) if is_jax_array(old) else None)


def restores_in_place(obj: Any) -> bool:
    """True for collections a restore can update in place (objax VarCollections, dicts of arrays)."""
    return is_var_collection(obj) or (
        type(obj) is dict and all(type(k) is str for k in obj) and all(is_array(v) for v in obj.values()))


def targets_of(obj: Any, values: Optional[Mapping[str, Any]] = None) -> tuple[list[Target], Callable[[], Any]]:
    """Targets of a collection, and a function returning the restored collection afterwards.

    ``values`` (name -> stored value leaf) replace the template's non-array leaves of those names."""
    if is_var_collection(obj):
        jnp = _jax().numpy
        out = []
        for names, var in _var_collection_items(obj):
            shape, dtype = shape_dtype(var.value)
            # Shapes and dtypes were checked by plan(); objax's own check trips a JAX deprecation.
            out.append(Target(names, shape, dtype, _var_assigner(var, jnp)))
        return out, lambda: obj
    if type(obj) is dict and all(is_array(v) for v in obj.values()) and all(type(k) is str for k in obj):
        return [_dict_target(obj, k) for k in obj], lambda: obj
    if _jax() is not None:
        return _template_targets(obj, values or {})
    flat = flatten(obj)
    if flat is None or flat.kind not in ("tree", "array", "scalar"):
        raise TypeError(f"cannot restore into a {type(obj).__name__}: expected an objax VarCollection, a dict of "
                        "arrays or a pytree of arrays")
    new_leaves: list[Any] = list(flat.leaves)
    targets = []
    for i, (name, leaf) in enumerate(zip(flat.names, flat.leaves)):
        shape, dtype = shape_dtype(leaf)

        def assign(arr: np.ndarray, i: int = i, leaf: Any = leaf) -> None:
            new_leaves[i] = _place_like(leaf, arr) if not isinstance(leaf, np.generic) else arr[()].copy()

        targets.append(Target([name], shape, dtype, assign))

    def rebuild() -> Any:
        if flat.kind in ("array", "scalar"):
            return new_leaves[0]
        return unflatten_tree(flat.tree, new_leaves, where="restore", values=values)

    return targets, rebuild


def _materialize(template: Any, arr: np.ndarray) -> Any:
    """A leaf like ``template`` (array, abstract ShapeDtypeStruct, typed key) holding ``arr``,
    placed where the template says: its sharding, or the default device."""
    if isinstance(template, np.generic):
        return arr[()].copy()
    if isinstance(template, np.ndarray):
        return np.array(arr)
    jax = _jax()
    sharding = getattr(template, "sharding", None)
    if is_typed_key(template):
        impl = key_impl_name(template) if not is_abstract(template) else _abstract_key_impl(template)
        key = jax.random.wrap_key_data(np.array(arr), impl=impl)
        return jax.device_put(key, sharding) if sharding is not None else key
    if sharding is not None:
        return jax.device_put(arr, sharding)
    return jax.numpy.asarray(arr)


def _abstract_key_impl(sds: Any) -> str:
    jax = _jax()
    return key_impl_name(jax.random.wrap_key_data(np.zeros(shape_dtype(sds)[0], np.uint32)))


def _template_targets(obj: Any, values: Mapping[str, Any]) -> tuple[list[Target], Callable[[], Any]]:
    """Targets from any JAX pytree: array and ShapeDtypeStruct leaves take stored arrays (named by
    key path); other leaves are kept from the template. Nothing is allocated until assignment."""
    jax = _jax()
    pairs, treedef = jax.tree_util.tree_flatten_with_path(obj)
    new_leaves = [leaf for _, leaf in pairs]
    targets = []
    for i, (keypath, leaf) in enumerate(pairs):
        if not (is_array(leaf) or is_abstract(leaf)):
            name = "/".join(_key_name(k) for k in keypath)
            if name in values:  # a plain value (an int step): the stored one, not the template's
                new_leaves[i] = values[name]
            continue
        name = "/".join(_key_name(k) for k in keypath) or "array"
        shape, dtype = shape_dtype(leaf)

        def assign(arr: np.ndarray, i: int = i, leaf: Any = leaf) -> None:
            new_leaves[i] = _materialize(leaf, arr)

        sharding = None if is_typed_key(leaf) else getattr(leaf, "sharding", None)
        targets.append(Target([name], shape, dtype, assign, sharding))
    if not targets:
        raise TypeError(f"cannot restore into a {type(obj).__name__}: it has no array or ShapeDtypeStruct leaves")
    return targets, lambda: jax.tree_util.tree_unflatten(treedef, new_leaves)


def _renamed(names: list[str], renamer: Renamer) -> dict[str, str]:
    """Map target-facing names to stored names."""
    if renamer is None:
        return {n: n for n in names}
    fn = (lambda n: renamer.get(n, n)) if isinstance(renamer, Mapping) else renamer
    return {fn(n): n for n in names}


def plan(targets: list[Target], stored: Mapping[str, tuple[tuple[int, ...], np.dtype]], *, renamer: Renamer,
         strict: bool, file: Optional[str], slot: Optional[str], cast: bool = False
         ) -> tuple[list[tuple[Target, str]], dict[str, Any]]:
    """Match targets to stored arrays; raise one MismatchError listing every problem (when strict).

    Returns the (target, stored name) pairs to assign and a report of what was skipped.
    With ``cast``, a dtype difference is not a mismatch (the array is converted on assignment).
    """
    index = _renamed(list(stored), renamer)
    pairs: list[tuple[Target, str]] = []
    missing: list[str] = []
    mismatched: list[tuple[str, str, str]] = []
    used: set[str] = set()
    for t in targets:
        for n in t.names:
            if n in index:
                src = index[n]
                used.add(src)
                shape, dtype = stored[src]
                if tuple(shape) != tuple(t.shape) or (np.dtype(dtype) != t.dtype and not cast):
                    mismatched.append((n, f"{t.dtype}{list(t.shape)}", f"{np.dtype(dtype)}{list(shape)}"))
                else:
                    pairs.append((t, src))
                break
        else:
            missing.extend(t.names)
    unused = [n for n in stored if n not in used]
    report = {"missing": missing, "unused": unused, "mismatched": mismatched}
    if strict and (missing or unused or mismatched):
        lines = [f"{file}: stored arrays do not fit the target collection (nothing was assigned):"]
        if missing:
            lines.append(f"  missing from the file ({len(missing)}): {_clip(missing)}")
        if unused:
            lines.append(f"  in the file but not in the target ({len(unused)}): {_clip(unused)}")
        for name, exp, found in mismatched[:50]:
            lines.append(f"  {name}: expected {exp}, found {found}")
        if len(mismatched) > 50:
            lines.append(f"  ... and {len(mismatched) - 50} more shape/dtype mismatches")
        lines.append("  (pass strict=False to restore only what matches, cast=True to convert dtypes, or a renamer "
                     "to map names)")
        raise MismatchError("\n".join(lines), file=file, slot=slot, missing=missing, unused=unused,
                            mismatched=mismatched)
    return pairs, report


def _clip(names: list[str], n: int = 20) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")
