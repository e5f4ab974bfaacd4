"""What a slot kind hands the file layer to write: members (name, size, bytes) and manifest records.

The file layer (_packfile) writes these without knowing which kind made them; the kinds
(ckpt.slotkinds, ckpt.serializers) make them without knowing how the zip is laid out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

Buffer = Union[bytes, bytearray, memoryview]


@dataclass
class MemberSource:
    """One member to write: its name inside the slot, exact size, and a producer of its bytes."""

    suffix: str
    size: int
    chunks: Callable[[], Iterable[Buffer]]
    identity: Optional[int] = None  # id() of the source object, to store one object once
    exact: bool = True  # False: ``size`` is an upper bound (compressed members)
    shared: Optional[tuple[str, str]] = None  # (algorithm, digest) of a shared object holding the bytes


@dataclass
class Encoded:
    """A value turned into members plus what the manifest records about it.

    ``needed``/``informational`` are packages whose installed versions are recorded (bound by
    ``strictness``, or not at all); ``dependencies`` are descriptors recorded as given (the
    user's own, ``deps={"mylib": "1.2"}``), overriding a computed entry of the same name.
    """

    serializer: str
    members: list[MemberSource]
    info: dict[str, Any] = field(default_factory=dict)
    needed: set[str] = field(default_factory=set)
    informational: set[str] = field(default_factory=set)
    strictness: str = "major"
    dependencies: dict[str, dict[str, str]] = field(default_factory=dict)
