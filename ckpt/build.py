"""``ckpt.build``: rebuild a model from the recipe in a checkpoint and restore its weights into it.

The recipe names classes; they are imported only when ``trusted`` admits every
one (the same ``module.qualname`` patterns as the pickle allow-list, e.g.
``"mypkg.models.*"``), and that check comes before any import. The weights are
then restored strictly, as ``Checkpoint.restore`` does: every name, shape and
dtype is checked before anything is assigned.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional, Union

from . import aliases as _aliases, collections as _coll, deps as _deps
from ._packfile import DEFAULT_SLOT, PackReader
from .checkpoint import Checkpoint
from .errors import CheckpointNotFoundError, RecipeNotFoundError, UntrustedClassError
from .recipes import Recipe, Trusted, adopt
from .storage import is_url, kind_of, split_location
from .varfile import open_reader, prepare_restore

log = logging.getLogger("ckpt")

__all__ = ["build", "manager_for", "resolve_path", "recipe_in"]


def manager_for(directory: str, storage_options: Optional[dict[str, Any]] = None) -> Checkpoint:
    """The manager of a log directory (checkpoints in ``<dir>/ckpt``) or of a bare directory of checkpoints
    (a path or URL)."""
    ck = Checkpoint(directory, makedir=False, verbose=False, storage_options=storage_options)
    if ck.storage.isdir():
        return ck
    parent, name = split_location(directory if is_url(directory) else os.path.abspath(directory))
    bare = Checkpoint(parent, makedir=False, verbose=False, storage_options=storage_options)
    bare.DIR_NAME = name  # type: ignore[misc]  # the checkpoints are in the given directory itself
    return bare


def resolve_path(target: Union[str, "os.PathLike[str]"], idx: Optional[int] = None,
                 alias: Optional[str] = None, storage_options: Optional[dict[str, Any]] = None) -> str:
    """The checkpoint file ``target`` (a path or URL) names: the file itself, or in a log directory ``idx``,
    ``alias`` or the latest."""
    path = os.fspath(target)
    if idx is not None and alias is not None:
        raise ValueError("pass idx= or alias=, not both")
    kind = kind_of(path, storage_options)
    if kind == "file":
        if idx is not None or alias is not None:
            raise ValueError(f"{path} is a checkpoint file; idx= and alias= select within a log directory")
        return path
    if kind is None:
        raise FileNotFoundError(2, "No such file or directory", path)
    ck = manager_for(path, storage_options)
    if alias is not None:
        idx = _aliases.resolve(ck.storage, alias)
    resolved = ck._resolve(idx)  # raises CheckpointNotFoundError for a missing idx
    if resolved is None:
        raise CheckpointNotFoundError(f"no checkpoint in {ck.directory}", file=ck.directory)
    return ck.path(resolved)


def recipe_in(reader: PackReader) -> Recipe:
    """The recipe a checkpoint records (validated; nothing imported)."""
    own = reader.metadata.get("ckpt")
    doc = own.get("recipe") if isinstance(own, dict) else None
    if doc is None:
        raise RecipeNotFoundError(f"{reader.label}: records no recipe (it was saved without recipe=); build the model "
                                  "yourself and restore into it", file=reader.label)
    return Recipe.from_dict(doc, f"{reader.label}: recipe")


def build(path_or_logdir: Union[str, "os.PathLike[str]"], idx: Optional[int] = None, *, trusted: Trusted = None,
          alias: Optional[str] = None, strict: bool = True, deps: str = "warn",
          storage_options: Optional[dict[str, Any]] = None) -> Any:
    """A model built from a checkpoint's recipe, with the checkpoint's weights restored into it.

    ``path_or_logdir`` is a checkpoint file or a log directory (then ``idx``,
    ``alias`` or the latest). The recipe's classes are imported only if
    ``trusted`` admits them all (``True`` or patterns such as
    ``["mypkg.models.*"]``), else :class:`~ckpt.errors.UntrustedClassError` and
    nothing is imported. Weights go, strictly: into an objax Module's
    ``vars()``; for a pytree model (equinox), using the built model as the
    template (the restored model is returned); for a flax linen module, which
    holds no weights, the stored variables are bound (``model.unbind()`` gives
    ``(module, variables)``); for a plain object, into its array attributes.
    ``ckpt.recipe_of(model)`` then gives the stored recipe (same ``id`` and ``parent``),
    so saving the model again keeps its identity; ``Recipe.build()`` makes a new one.
    ``path_or_logdir`` may be an fsspec URL (``storage_options`` go to its filesystem).
    """
    path = resolve_path(path_or_logdir, idx, alias, storage_options)
    with open_reader(path, storage_options=storage_options) as reader:
        recipe = recipe_in(reader)
        try:
            obj = recipe.build(trusted=trusted)
        except UntrustedClassError as e:
            raise UntrustedClassError(f"{path}: {e}", file=path, classes=e.classes) from None
        _deps.report(reader.dependency_mismatches([DEFAULT_SLOT]), _deps.check_mode(deps), path)
        log.info("built %s from %s", recipe.cls, path)
        restored = _restore_into(obj, reader, strict)
    adopt(restored, recipe)  # the saved model itself: recipe_of gives the stored id and parent
    return restored


def _restore_into(obj: Any, reader: PackReader, strict: bool) -> Any:
    objax = sys.modules.get("objax")
    if objax is not None and isinstance(obj, objax.Module):
        prepare_restore(reader, DEFAULT_SLOT, obj.vars(), strict=strict).commit()
        return obj
    linen = sys.modules.get("flax.linen")
    if linen is not None and isinstance(obj, linen.Module):
        return obj.bind(reader.arrays(DEFAULT_SLOT).as_value())
    jax = sys.modules.get("jax")
    if jax is not None:
        leaves = jax.tree_util.tree_leaves(obj)
        if not (len(leaves) == 1 and leaves[0] is obj) and any(_coll.is_array(x) for x in leaves):
            restored = prepare_restore(reader, DEFAULT_SLOT, obj, strict=strict).commit()
            return restored
    try:
        attrs = {k: v for k, v in vars(obj).items() if _coll.is_array(v)}
    except TypeError:
        attrs = {}
    restored = prepare_restore(reader, DEFAULT_SLOT, attrs, strict=strict).commit()
    for name, value in (restored if isinstance(restored, dict) else attrs).items():
        setattr(obj, name, value)
    return obj
