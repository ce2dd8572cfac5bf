"""Registry names: version ids and aliases, two closed sets, so a name can never reach outside the registry.

A version id is ``v`` and a number without leading zeros (``v1``, ``v12``; ``v01`` and ``v0`` are refused,
so each number has exactly one spelling), an alias is one of :data:`ALIASES`. Nothing else (``../x``,
``v1/../v2``, ``/abs``) is a name, so no name can point outside ``<root>/versions/``.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from rankwise.errors import ModelError

ALIASES = ("production", "candidate")
VERSION_ID = re.compile(r"v[1-9][0-9]*")
#: anything shaped like a version id names the registry, which then refuses non-canonical ones (``v01``)
_VERSION_LIKE = re.compile(r"v\d+")


def names_registry(spec: str) -> bool:
    """Whether a model spec names a registry entry (an alias, or anything shaped like a version id) rather
    than a directory or hub id; such names always mean the registry, whatever the working directory holds."""
    return spec in ALIASES or _VERSION_LIKE.fullmatch(spec) is not None


def check_name(name: str) -> str:
    """``name`` if it is a version id or an alias, else a one-line :class:`ModelError`.

    Only these two closed forms exist so that no name (``../x``, ``v1/../v2``, ``/abs``) can point outside
    ``<root>/versions/``; ``v01`` is refused rather than read as ``v1`` so a version has one spelling.
    """
    if name in ALIASES or VERSION_ID.fullmatch(name):
        return name
    hint = f"; did you mean v{int(name[1:])}?" if re.fullmatch(r"v0[0-9]*[1-9][0-9]*", name) else ""
    raise ModelError(f"'{name}' is not a registry name: use a version id (v1, v2, … — 'v' and a number without "
                     f"leading zeros) or an alias ({', '.join(ALIASES)}){hint}")


def is_version_id(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a canonical version id (history events may hold anything, so any value is asked)."""
    return isinstance(name, str) and VERSION_ID.fullmatch(name) is not None


def version_number(version: str) -> int:
    """The number of a version id: versions sort by it (``v10`` after ``v9``), not by their spelling."""
    return int(version[1:])
