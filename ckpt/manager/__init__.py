"""The checkpoint manager, one module per concern; :class:`Checkpoint` is the facade users import.

- :mod:`.naming`: file names, listing, the writer lock;
- :mod:`.background`: the save thread and interpreter exit;
- :mod:`.restoring`: restore/load with fallback past damaged checkpoints, ``wait_for_new``;
- :mod:`.pruning`: retention, ``prune``, ``best`` and the metadata cache;
- :mod:`.saving`: ``save``, its atomic commit and rotation;
- :mod:`.checkpoint`: the constructor and aliases.
"""

from .checkpoint import Checkpoint

__all__ = ["Checkpoint"]
