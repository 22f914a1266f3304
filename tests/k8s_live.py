"""Live objects for ``k8s_fake``'s server: one collection that keeps state, with field ownership.

Recorded replies cannot say what an object looks like after a sequence of writes; this does.
It answers POST (create), GET, PUT (with a resourceVersion precondition), PATCH (JSON merge
patch, or server-side apply) and DELETE (with uid/resourceVersion preconditions) on one
collection path, with the API server's status codes and Status bodies; ``dryRun`` answers a
write without keeping it.

Field ownership follows server-side apply as documented upstream
(kubernetes.io/docs/reference/using-api/server-side-apply): every write records which leaf
fields its manager set (``fieldManager``, else the User-Agent's product, as the API server
derives it), keyed by (manager, operation); an apply that omits a field its manager owned
removes it unless another manager owns it too; a field another manager set to another value is
a conflict (409) unless the apply is forced, which takes it over. Lists are atomic (what a CRD
list without ``x-kubernetes-list-type: map`` is): lists of maps are refused here rather than
merged wrongly. Only ``metadata.labels``, ``annotations`` and ``finalizers`` are owned fields
of the metadata; ``status`` is a subresource, left alone by writes to the object.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from typing import Any

Path = tuple[str, ...]
APPLY = "application/apply-patch+yaml"
OWNED_METADATA = ("labels", "annotations", "finalizers")


def status(code: int, reason: str, message: str) -> tuple[int, dict]:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return code, body | {"reason": reason, "message": message}


def owned_part(obj: dict[str, Any]) -> dict[str, Any]:
    """What a writer sets: everything but status and the server's metadata."""
    part = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("status", "metadata")}
    meta = {k: copy.deepcopy(v) for k, v in (obj.get("metadata") or {}).items()}
    part["metadata"] = {k: v for k, v in meta.items() if k in OWNED_METADATA}
    return part


def leaves(obj: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every leaf field (a scalar, a list) of ``obj`` with its value; an empty map sets none."""
    if isinstance(obj, dict):
        out: dict[Path, Any] = {}
        for key, value in obj.items():
            out |= leaves(value, (*prefix, key))
        return out
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        raise NotImplementedError(f"{'.'.join(prefix)}: lists of maps are not modelled")
    return {prefix: obj}


def put(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = copy.deepcopy(value)


def remove(obj: dict[str, Any], path: Path) -> None:
    """Remove ``path`` and the maps it leaves empty."""
    parents = [obj]
    for key in path[:-1]:
        if not isinstance(parents[-1].get(key), dict):
            return
        parents.append(parents[-1][key])
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if parents[depth]:
            break
        parents[depth - 1].pop(path[depth - 1])


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def overlaps(a: Path, b: Path) -> bool:
    return a[: len(b)] == b or b[: len(a)] == a


class LiveObjects:
    """The objects of one collection (``/apis/G/V/namespaces/NS/PLURAL``), by name."""

    def __init__(self, collection: str, kind: str, api_version: str):
        self.collection, self.kind, self.api_version = collection, kind, api_version
        self.objects: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, dict[tuple[str, str], set[Path]]] = {}
        self.version = 1000
        self.lock = threading.Lock()

    # -- what the server answers ------------------------------------------------------------

    def handles(self, path: str) -> bool:
        return path == self.collection or path.startswith(self.collection + "/")

    def answer(self, method, path, query, headers, body) -> tuple[int, dict]:
        if not query.get("dryRun"):
            return self._answer(method, path, query, headers, body)
        with self.lock:  # the write on a copy; the objects themselves stay as they are
            kept = (self.objects, self.owners, self.version)
            self.objects, self.owners = copy.deepcopy((self.objects, self.owners))
        try:
            return self._answer(method, path, query, headers, body)
        finally:
            with self.lock:
                self.objects, self.owners, self.version = kept

    def _answer(self, method, path, query, headers, body) -> tuple[int, dict]:
        name = path[len(self.collection) + 1 :] or None
        manager = (query.get("fieldManager") or [None])[0] or _agent(headers)
        with self.lock:
            if method == "POST" and not name:
                return self._create(body, manager)
            if name is None or "/" in name:
                return status(405, "MethodNotAllowed", f"{method} {path}")
            if method == "GET":
                return self._get(name)
            if method == "DELETE":
                return self._delete(name, body or {})
            if method == "PUT":
                return self._replace(name, body, manager)
            if method == "PATCH" and headers.get("Content-Type") == APPLY:
                force = (query.get("force") or ["false"])[0].lower() == "true"
                return self._apply(name, body, manager, force)
            if method == "PATCH":
                return self._merge(name, body, manager)
        return status(405, "MethodNotAllowed", f"{method} {path}")

    def set_status(self, name: str, status_: dict[str, Any]) -> None:
        """What the operator writes through the status subresource."""
        with self.lock:
            self.objects[name]["status"] = copy.deepcopy(status_)

    def update_as(self, manager: str, name: str, patch: dict[str, Any]) -> None:
        """Another actor's merge patch (``kubectl annotate``, a controller's finalizer)."""
        with self.lock:
            self._merge(name, patch, manager)

    def managers(self, name: str) -> dict[tuple[str, str], set[Path]]:
        return self.owners.get(name, {})

    # -- writes ---------------------------------------------------------------------------

    def _missing(self, name: str) -> tuple[int, dict]:
        plural = self.collection.rsplit("/", 1)[1]
        return status(404, "NotFound", f'{plural} "{name}" not found')

    def _get(self, name: str) -> tuple[int, dict]:
        if name not in self.objects:
            return self._missing(name)
        return 200, self._shown(name)

    def _create(self, body: dict, manager: str) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        if name in self.objects:
            plural = self.collection.rsplit("/", 1)[1]
            return status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        self._new(name)
        self._write(name, owned_part(body), (manager, "Update"), whole=True)
        return 201, self._shown(name)

    def _replace(self, name: str, body: dict, manager: str) -> tuple[int, dict]:
        if name not in self.objects:
            return self._missing(name)
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given and given != self.objects[name]["metadata"]["resourceVersion"]:
            return self._conflict(name, "the object has been modified")
        self._write(name, owned_part(body), (manager, "Update"), whole=True)
        return 200, self._shown(name)

    def _merge(self, name: str, patch: dict, manager: str) -> tuple[int, dict]:
        if name not in self.objects:
            return self._missing(name)
        merged = merge_patch(owned_part(self.objects[name]), owned_part(patch))
        self._write(name, merged, (manager, "Update"), whole=True)
        return 200, self._shown(name)

    def _apply(self, name: str, body: dict, manager: str, force: bool) -> tuple[int, dict]:
        created = name not in self.objects
        if created:
            self._new(name)
        owners, key = self.owners[name], (manager, "Apply")
        live, applied = self.objects[name], leaves(owned_part(body))
        current = leaves(owned_part(live))
        conflicts = [
            (other, path)
            for other, fields in owners.items()
            if other != key
            for path in applied
            if any(overlaps(path, f) for f in fields) and current.get(path) != applied[path]
        ]
        if conflicts and not force:
            (who, _), path = conflicts[0]
            return self._conflict(name, f'conflict with "{who}": .{".".join(path)}')
        for other, path in conflicts:  # forced: the field becomes this manager's alone
            owners[other] = {f for f in owners[other] if not overlaps(f, path)}
        others = [f for k, fields in owners.items() if k != key for f in fields]
        for path in owners.get(key, set()) - set(applied):
            if not any(overlaps(path, f) for f in others):  # given up, and nobody holds it
                remove(live, path)
        owners[key] = set()  # an apply owns exactly what it sent
        self._write(name, owned_part(body), key, whole=False)
        return (201 if created else 200), self._shown(name)

    def _new(self, name: str) -> None:
        self.objects[name] = {"metadata": {"name": name, "uid": str(uuid.uuid4())}}
        self.owners[name] = {}

    def _write(self, name: str, part: dict, key: tuple[str, str], whole: bool) -> None:
        """Set ``part``'s leaves on the live object (``whole``: and remove what it lacks).
        An apply owns every field it sent; an update the fields it changed. A changed field
        is no other manager's any more; one set to the value it had stays shared."""
        live, owners = self.objects[name], self.owners[name]
        old, new = leaves(owned_part(live)), leaves(part)
        spec_before = json.dumps(live.get("spec"), sort_keys=True)
        gone = old.keys() - new.keys() if whole else set()
        changed = {p: v for p, v in new.items() if old.get(p) != v}
        for path in gone:
            remove(live, path)
            for fields in owners.values():
                fields -= {f for f in fields if overlaps(f, path)}
        for path in changed:
            for other, fields in owners.items():
                if other != key:
                    fields -= {f for f in fields if overlaps(f, path)}
        for path, value in changed.items():
            put(live, path, value)
        owners.setdefault(key, set()).update(new if key[1] == "Apply" else changed)
        self.owners[name] = {k: v for k, v in owners.items() if v}
        meta = live["metadata"]
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        if "generation" not in meta or spec_before != json.dumps(live.get("spec"), sort_keys=True):
            meta["generation"] = meta.get("generation", 0) + 1

    def _delete(self, name: str, options: dict) -> tuple[int, dict]:
        if name not in self.objects:
            return self._missing(name)
        meta, wanted = self.objects[name]["metadata"], options.get("preconditions") or {}
        for key in ("uid", "resourceVersion"):
            if wanted.get(key) and wanted[key] != meta[key]:
                return self._conflict(name, f"Precondition failed: {key} in precondition")
        del self.objects[name], self.owners[name]
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}

    def _conflict(self, name: str, why: str) -> tuple[int, dict]:
        return status(409, "Conflict", f'Operation cannot be fulfilled on "{name}": {why}')

    def _shown(self, name: str) -> dict[str, Any]:
        shown = copy.deepcopy(self.objects[name])
        shown["metadata"]["managedFields"] = [
            {
                "manager": manager,
                "operation": operation,
                "fieldsType": "FieldsV1",
                "fieldsV1": _fields_v1(fields),
            }
            for (manager, operation), fields in sorted(self.owners[name].items())
        ]
        return {"apiVersion": self.api_version, "kind": self.kind, **shown}


def _agent(headers) -> str:
    """The API server's default manager: the User-Agent up to its first '/'."""
    return (headers.get("User-Agent") or "unknown").split("/", 1)[0]


def _fields_v1(fields: set[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(fields):
        node = out
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return out
