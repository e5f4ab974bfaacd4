"""Dependency descriptors: what wrote a slot, recorded at dump and checked at load.

Each slot records, per package, the version that wrote it and a version
specifier (PEP 440, checked with :mod:`packaging`) saying which installed
versions can read it back. Arrays only need numpy's major version to agree;
pickles need the same minor versions of everything they import, because a
pickle rebuilds objects through the classes of the installed code.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import warnings
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Optional

from .errors import DependencyError, DependencyWarning

DepsMode = Literal["warn", "strict", "ignore"]
DEPS_MODES = ("warn", "strict", "ignore")

#: How strictly each kind of slot binds versions: "major" or "minor".
Strictness = Literal["major", "minor"]

# Distribution names for modules whose import name differs.
_DIST_NAMES = {"jaxlib": "jaxlib", "ml_dtypes": "ml-dtypes", "ckpt": "ckpt"}


@functools.lru_cache(maxsize=None)
def installed_version(package: str) -> Optional[str]:
    """The installed version of a package (``python`` for the interpreter), or None."""
    if package == "python":
        return platform.python_version()
    for dist in (_DIST_NAMES.get(package, package), package.replace("_", "-")):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if package == "ckpt":
        from . import __version__

        return __version__
    return None


def _specifier(version: str, strictness: Strictness) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(version)
    except InvalidVersion:
        return f"=={version}"
    if strictness == "minor" or v.major == 0:
        # 0.x releases break compatibility at minor versions, as jax and objax do.
        return f">={v.major}.{v.minor},<{v.major}.{v.minor + 1}"
    return f">={v.major},<{v.major + 1}"


def describe(
    needed: Iterable[str] = (), strictness: Strictness = "major", informational: Iterable[str] = ()
) -> dict[str, dict[str, str]]:
    """Descriptors ``{name: {version, requires}}`` for python, numpy, ckpt and the given packages.

    ``needed`` packages must satisfy ``requires`` at load; ``informational`` ones
    (frameworks the data came from but that reading it does not need) are
    recorded with an empty ``requires``. ckpt's own compatibility is governed by
    the format version, so its entry is informational too.
    """
    informational = set(informational) | {"ckpt"}
    out: dict[str, dict[str, str]] = {}
    for name in ["python", "numpy", "ckpt", *sorted(set(needed) | informational)]:
        if name in out:
            continue
        version = installed_version(name)
        if version is None:
            continue
        loose = name in informational and name not in set(needed)
        out[name] = {"version": version, "requires": "" if loose else _specifier(version, strictness)}
    return out


def user_descriptors(deps: Mapping[str, object]) -> dict[str, dict[str, str]]:
    """The user's own descriptors for a slot, as recorded: ``{"mylib": "1.2"}`` needs mylib of the same
    major version (same minor for 0.x) to read it; ``{"mylib": {"version": "1.2", "requires": ">=1.1"}}``
    says so exactly, and ``"requires": ""`` records the entry without checking it."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    from . import _limits

    if len(deps) > _limits.MAX_DEPENDENCIES // 2:
        raise ValueError(f"{len(deps)} dependency descriptors for one slot; at most {_limits.MAX_DEPENDENCIES // 2}")
    out: dict[str, dict[str, str]] = {}
    for name, desc in deps.items():
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            raise TypeError(f"dependency names are strings of 1-100 characters, not {name!r:.120}")
        if isinstance(desc, str):
            version, requires = desc, _specifier(desc, "major")
        elif isinstance(desc, Mapping) and isinstance(desc.get("version"), str) and isinstance(
                desc.get("requires", ""), str) and set(desc) <= {"version", "requires"}:
            version = desc["version"]
            requires = desc["requires"] if "requires" in desc else _specifier(version, "major")
        else:
            raise TypeError(f"dependency {name!r}: expected a version string or {{'version': str, 'requires': str}}, "
                            f"found {desc!r:.120}")
        if not 0 < len(version) <= 100:
            raise ValueError(f"dependency {name!r}: version {version!r:.120} must be 1-100 characters")
        if len(requires) > _limits.MAX_REQUIRES_CHARS or requires.count(",") >= _limits.MAX_REQUIRES_CLAUSES:
            raise ValueError(f"dependency {name!r}: requires {requires!r:.80} is over the limits of "
                             f"{_limits.MAX_REQUIRES_CHARS} characters and {_limits.MAX_REQUIRES_CLAUSES} clauses")
        try:
            SpecifierSet(requires)
        except InvalidSpecifier:
            raise ValueError(f"dependency {name!r}: requires {requires!r} is not a PEP 440 specifier") from None
        out[name] = {"version": version, "requires": requires}
    return out


@dataclass(frozen=True)
class Mismatch:
    package: str
    recorded: str
    installed: str
    requires: str
    where: str


def find_mismatches(deps: Mapping[str, Mapping[str, str]], where: str) -> list[Mismatch]:
    """Packages whose installed version does not satisfy what the slot requires."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    found = []
    for name, desc in deps.items():
        recorded = str(desc.get("version", "?"))
        requires = str(desc.get("requires", ""))
        installed = installed_version(name)
        if installed is None:
            if not requires:
                continue  # informational: reading does not need it
            found.append(Mismatch(name, recorded, "not installed", requires, where))
            continue
        try:
            ok = Version(installed) in SpecifierSet(requires) if requires else True
        except (InvalidSpecifier, InvalidVersion):
            ok = installed == recorded
        if not ok:
            found.append(Mismatch(name, recorded, installed, requires, where))
    return found


def report(mismatches: list[Mismatch], mode: DepsMode, file: Optional[str]) -> None:
    """Warn once (or raise, with ``strict``) about every mismatch found for one load."""
    if not mismatches or mode == "ignore":
        return
    lines = [
        f"  {m.package}: recorded {m.recorded}, installed {m.installed} (needs {m.requires}) [{m.where}]"
        for m in mismatches
    ]
    message = (
        f"{file}: installed packages differ from those that wrote it; results may differ or loading "
        "may fail:\n" + "\n".join(lines)
    )
    if mode == "strict":
        raise DependencyError(
            message + "\n(pass deps='warn' or deps='ignore' to load anyway)",
            file=file,
            mismatches=[(m.package, m.recorded, m.installed) for m in mismatches],
        )
    warnings.warn(message, DependencyWarning, stacklevel=3)


def check_mode(mode: str) -> DepsMode:
    if mode not in DEPS_MODES:
        raise ValueError(f"deps must be one of {DEPS_MODES}, not {mode!r}")
    return mode  # type: ignore[return-value]
