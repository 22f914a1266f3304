"""NetworkPolicy semantics (``networking.k8s.io/v1``), evaluated for one connection at a time.

As the API documents them: a pod no policy selects for a direction is open in that direction; a
selected pod accepts only what some rule of a selecting policy allows; a connection needs both
the source's egress and the destination's ingress. ``policyTypes`` defaults to Ingress, plus
Egress when the policy has egress rules. A peer with only ``podSelector`` means pods of the
policy's namespace; with ``namespaceSelector`` pods of matching namespaces (every namespace
carries ``kubernetes.io/metadata.name``); ``ipBlock`` addresses endpoints outside the cluster.
Ports: number or container port name (of the destination pod), protocol TCP unless given,
``endPort`` ranges; no ports: every port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace, labels, named container ports) or an address outside the cluster."""

    name: str
    namespace: str | None = None  # None: outside the cluster, at ``ip``
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    ip: str = ""


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions together; empty selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


class Cluster:
    """The policies of a cluster and its namespaces' labels."""

    def __init__(self, policies: list[dict[str, Any]], namespaces: dict[str, dict[str, str]]):
        self.policies = policies
        self.namespaces = {
            ns: {**labels, "kubernetes.io/metadata.name": ns} for ns, labels in namespaces.items()
        }

    def _types(self, policy: dict[str, Any]) -> list[str]:
        spec = policy["spec"]
        if "policyTypes" in spec:
            return spec["policyTypes"]
        return ["Ingress", *(["Egress"] if "egress" in spec else [])]

    def _selecting(self, pod: Endpoint, direction: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and direction in self._types(p)
            and selects(p["spec"].get("podSelector"), pod.labels)
        ]

    def _peer(self, peer: dict[str, Any], other: Endpoint, policy_ns: str) -> bool:
        if "ipBlock" in peer:
            if other.namespace is not None:
                return False  # pod addresses are the CNI's business: never counted on here
            block, ip = peer["ipBlock"], ipaddress.ip_address(other.ip)
            inside = ip in ipaddress.ip_network(block["cidr"])
            return inside and not any(
                ip in ipaddress.ip_network(e) for e in block.get("except", [])
            )
        if other.namespace is None:
            return False
        if "namespaceSelector" in peer:
            ns_ok = selects(peer["namespaceSelector"], self.namespaces.get(other.namespace, {}))
        else:
            ns_ok = other.namespace == policy_ns
        return ns_ok and selects(peer.get("podSelector"), other.labels)

    @staticmethod
    def _port(rule_ports: list[dict[str, Any]] | None, dst: Endpoint, port: int, proto: str):
        if not rule_ports:
            return True
        for p in rule_ports:
            if p.get("protocol", "TCP") != proto:
                continue
            if "port" not in p:
                return True
            first = p["port"] if isinstance(p["port"], int) else dst.ports.get(p["port"])
            if first is not None and first <= port <= p.get("endPort", first):
                return True
        return False

    def _allows(self, pod: Endpoint, other: Endpoint, dst: Endpoint, port, proto, direction):
        policies = self._selecting(pod, direction)
        if not policies:
            return True  # no policy isolates this pod in this direction
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in policies:
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                peer_ok = not peers or any(
                    self._peer(p, other, policy["metadata"]["namespace"]) for p in peers
                )
                if peer_ok and self._port(rule.get("ports"), dst, port, proto):
                    return True
        return False

    def allowed(self, src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP") -> bool:
        egress = src.namespace is None or self._allows(src, dst, dst, port, proto, "Egress")
        ingress = dst.namespace is None or self._allows(dst, src, dst, port, proto, "Ingress")
        return egress and ingress
