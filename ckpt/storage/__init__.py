"""Where checkpoint bytes live: one small interface (:mod:`ckpt.storage.base`) and its backends."""

from .base import ObjectInfo, Storage

__all__ = ["ObjectInfo", "Storage"]
