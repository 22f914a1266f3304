"""Pod Security Standards, level ``restricted``, as the admission plugin enforces them.

Implemented from the upstream rule list of Kubernetes v1.33 (kubernetes/pod-security-admission,
tag v0.33.13, ``policy/check_*.go``; the lmforge namespace pins ``enforce-version: v1.33``): every
baseline check, with the three the restricted level overrides (capabilities, seccomp, hostPath
volumes) replaced by their restricted versions. The user-namespace relaxations
(``hostUsers: false``) sit behind a feature gate that is off by default in v1.33: not applied.

``violations(metadata, spec)`` returns one line per failed check, as the admission's message says
it; empty: the pod is admitted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

VERSION = "v1.33"
Pod = tuple[dict[str, Any], dict[str, Any]]  # (metadata, spec)

ALLOWED_SYSCTLS = {  # check_sysctls.go, sysctlsAllowedV1Dot32
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
ALLOWED_VOLUMES = {  # check_restrictedVolumes.go
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """visitor.go: init containers, containers, ephemeral containers."""
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


def _windows(spec: dict[str, Any]) -> bool:
    return (spec.get("os") or {}).get("name") == "windows"


def _bad(spec: dict[str, Any], test: Callable[[dict[str, Any]], bool]) -> list[str]:
    return [c["name"] for c in containers(spec) if test(_sc(c))]


# -- baseline -------------------------------------------------------------------------------


def host_process(meta, spec) -> str | None:
    def on(sc):
        return (sc.get("windowsOptions") or {}).get("hostProcess") is True

    setters = (["pod"] if on(_sc(spec)) else []) + _bad(spec, on)
    return f"hostProcess: {setters} set windowsOptions.hostProcess=true" if setters else None


def host_namespaces(meta, spec) -> str | None:
    shared = [k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    return f"host namespaces: {shared}" if shared else None


def privileged(meta, spec) -> str | None:
    bad = _bad(spec, lambda sc: sc.get("privileged") is True)
    return f"privileged: {bad}" if bad else None


def host_ports(meta, spec) -> str | None:
    bad = [
        c["name"] for c in containers(spec) if any(p.get("hostPort") for p in c.get("ports") or [])
    ]
    return f"hostPort: {bad}" if bad else None


def app_armor(meta, spec) -> str | None:
    def wrong(sc):
        profile = sc.get("appArmorProfile")
        return profile is not None and profile.get("type") not in APPARMOR_TYPES

    setters = (["pod"] if wrong(_sc(spec)) else []) + _bad(spec, wrong)
    prefix = "container.apparmor.security.beta.kubernetes.io/"
    for key, value in (meta.get("annotations") or {}).items():
        allowed = not value or value == "runtime/default" or value.startswith("localhost/")
        if key.startswith(prefix) and not allowed:
            setters.append(f"annotation {key}")
    return f"AppArmor profile: {setters}" if setters else None


def se_linux(meta, spec) -> str | None:
    def wrong(sc):
        opts = sc.get("seLinuxOptions")
        if opts is None:
            return False
        return opts.get("type", "") not in SELINUX_TYPES or bool(
            opts.get("user") or opts.get("role")
        )

    setters = (["pod"] if wrong(_sc(spec)) else []) + _bad(spec, wrong)
    return f"seLinuxOptions: {setters}" if setters else None


def proc_mount(meta, spec) -> str | None:
    bad = _bad(spec, lambda sc: sc.get("procMount") not in (None, "Default"))
    return f"procMount: {bad}" if bad else None


def sysctls(meta, spec) -> str | None:
    bad = [s["name"] for s in _sc(spec).get("sysctls") or [] if s["name"] not in ALLOWED_SYSCTLS]
    return f"forbidden sysctls: {bad}" if bad else None


# -- restricted (capabilities, seccomp, volumes replace their baseline checks) --------------


def restricted_volumes(meta, spec) -> str | None:
    bad = [
        v["name"] for v in spec.get("volumes") or [] if not (set(v) - {"name"}) <= ALLOWED_VOLUMES
    ]
    return f"restricted volume types: {bad}" if bad else None


def allow_privilege_escalation(meta, spec) -> str | None:
    if _windows(spec):
        return None
    bad = _bad(spec, lambda sc: sc.get("allowPrivilegeEscalation") is not False)
    return f"allowPrivilegeEscalation != false: {bad}" if bad else None


def run_as_non_root(meta, spec) -> str | None:
    pod = _sc(spec).get("runAsNonRoot")
    if pod is False:
        return "runAsNonRoot != true: the pod sets runAsNonRoot=false"
    bad = _bad(spec, lambda sc: sc.get("runAsNonRoot") is False)
    bad += _bad(spec, lambda sc: sc.get("runAsNonRoot") is None and pod is not True)
    return f"runAsNonRoot != true: {bad}" if bad else None


def run_as_user(meta, spec) -> str | None:
    setters = (["pod"] if _sc(spec).get("runAsUser") == 0 else []) + _bad(
        spec, lambda sc: sc.get("runAsUser") == 0
    )
    return f"runAsUser=0: {setters}" if setters else None


def seccomp(meta, spec) -> str | None:
    if _windows(spec):
        return None
    pod = _sc(spec).get("seccompProfile")
    if pod is not None and pod.get("type") not in SECCOMP_TYPES:
        return f"seccompProfile: the pod sets type {pod.get('type')}"

    def wrong(sc):  # a container may leave it out when the pod sets it
        profile = sc.get("seccompProfile")
        return profile.get("type") not in SECCOMP_TYPES if profile else pod is None

    bad = _bad(spec, wrong)
    return f"seccompProfile not RuntimeDefault or Localhost: {bad}" if bad else None


def capabilities(meta, spec) -> str | None:
    if _windows(spec):
        return None
    missing = _bad(spec, lambda sc: "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []))
    adding = _bad(
        spec,
        lambda sc: bool(
            set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
        ),
    )
    found = []
    if missing:
        found.append(f'{missing} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        found.append(f"{adding} may add NET_BIND_SERVICE only")
    return "unrestricted capabilities: " + "; ".join(found) if found else None


CHECKS = (
    host_process,
    host_namespaces,
    privileged,
    host_ports,
    app_armor,
    se_linux,
    proc_mount,
    sysctls,
    restricted_volumes,
    allow_privilege_escalation,
    run_as_non_root,
    run_as_user,
    seccomp,
    capabilities,
)


def violations(meta: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    return [found for check in CHECKS if (found := check(meta, spec))]
