"""Incremental checkpoints: an array already committed in a checkpoint directory is not written again.

Layout (docs/FORMAT.md section 2.3): large array members go to content-addressed shared objects
``<ckpt dir>/objects/<algorithm>/<digest>.npy``, written once and referred to by each checkpoint
that holds them; the checkpoint file keeps its names, small arrays, other slots and manifest.

- :mod:`._objects` -- the object folder: durable writes, verified reads, listing, deletion;
- :mod:`._saver` -- what one save writes and what it refers to (the identity fast path for JAX arrays);
- :mod:`._refs` -- references recomputed from the committed files, garbage collection, export.

This package imports only the object layer eagerly: the pack reader imports it.
"""

from ._objects import OBJECTS_DIR, MissingObjectError, ObjectStore

__all__ = ["OBJECTS_DIR", "MissingObjectError", "ObjectStore"]
