"""RBAC as the authorizer sees it: requests as (group, resource, verb), grants of an account.

``permissions`` turns an HTTP request into what RBAC checks (the API server's request info:
GET on a named object is ``get``, on a collection ``list`` or ``watch``, POST ``create``, PUT
``update``, PATCH ``patch`` (a server-side apply too), DELETE ``delete``; a subresource is
``<resource>/<sub>``). ``granted`` collects what the RoleBindings of a namespace give an account.
"""

from __future__ import annotations

from typing import Any

Permission = tuple[str, str, str]  # (apiGroup, resource, verb)


def permissions(method: str, path: str, query: dict, code: int) -> tuple[str, set[Permission]]:
    """(namespace, permissions) of a request to /api[s]/.../namespaces/N/R[/name[/sub]] that was
    answered with ``code``: a PATCH that created the object (a server-side apply, 201) is
    authorized as ``create`` as well (kubernetes.io/docs/reference/using-api/api-concepts,
    "Patch and apply")."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":  # the core group: /api/v1/...
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    assert rest[0] == "namespaces", f"{path}: lmforge only makes namespaced calls"
    namespace, resource, named = rest[1], rest[2], rest[3:]
    if len(named) > 1:
        resource = f"{resource}/{named[1]}"
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    if verb is None:  # GET
        watch = query.get("watch", ["false"])[0].lower() in ("true", "1")
        verb = "get" if named else ("watch" if watch else "list")
    verbs = {verb, "create"} if method == "PATCH" and code == 201 else {verb}
    return namespace, {(group, resource, v) for v in verbs}


def rules(role: dict[str, Any]) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in role.get("rules") or []
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def granted(objs: list[dict[str, Any]], account: tuple[str, str], namespace: str) -> set:
    """Everything the RoleBindings of ``namespace`` grant ServiceAccount ``(ns, name)``."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs}
    out: set[Permission] = set()
    for binding in objs:
        if binding["kind"] != "RoleBinding" or binding["metadata"]["namespace"] != namespace:
            continue
        subjects = {
            (s.get("namespace"), s["name"])
            for s in binding.get("subjects") or []
            if s["kind"] == "ServiceAccount"
        }
        if account in subjects:
            ref = binding["roleRef"]
            role_ns = namespace if ref["kind"] == "Role" else None
            out |= rules(roles[(ref["kind"], role_ns, ref["name"])])
    return out


def bound_accounts(objs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(binding namespace, account namespace, account name) of every ServiceAccount subject."""
    return {
        (b["metadata"]["namespace"], s.get("namespace"), s["name"])
        for b in objs
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in b.get("subjects") or []
        if s["kind"] == "ServiceAccount"
    }
