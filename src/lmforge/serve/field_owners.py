"""Which fields of a live object another writer owns: what a server-side apply cannot remove.

An apply removes only the fields its own manager set before and now omits. A field another
manager wrote with an update (``kubectl edit``, or lmforge before it applied: a create and a
merge patch by the Python client's default manager) stays on the object whatever the render
says. ``metadata.managedFields`` names each writer's fields (``fieldsV1``: ``f:<key>`` per map
key, ``k:``/``v:`` per list item, ``.`` for the node itself).
"""

from __future__ import annotations

from typing import Any


def _leaves(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths ``fieldsV1`` owns; a list item (``k:``/``v:``) stands for its whole list."""
    children = {k: v for k, v in node.items() if k != "."}
    if not children or any(not k.startswith("f:") for k in children):
        return [prefix]
    return [path for key, value in children.items() for path in _leaves(value, (*prefix, key[2:]))]


def _has(obj: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


def foreign_spec_fields(live: dict[str, Any], render: dict[str, Any], manager: str) -> list[str]:
    """``spec`` fields of ``live`` that ``render`` lacks and a writer other than ``manager``
    owns through the object itself (not the status subresource): "path (by writer)"."""
    found = []
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager or entry.get("subresource"):
            continue
        spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        for path in _leaves(spec, ("spec",)):
            if not _has(render, path):
                found.append(f"{'.'.join(path)} (by {entry.get('manager')})")
    return sorted(set(found))
