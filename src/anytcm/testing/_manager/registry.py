"""An in-memory stand-in for OpenStack VMs, Docker containers and registered Triton servers.

Management actions (contract §4.2) act on it; inference routing (§4.3) reads it.
"""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .errors import TritonError
from .zoo import MODELS, Model

# The keys `creation` needs under `openstack` (config/openstack.yaml.example `creation_variables`).
CREATION_VARIABLES = ("name", "keypair", "image_id", "security", "flavor_id", "network_id")
SHM_CACHE_SIZE = 256


class ManagementFailure(Exception):
    """A known-class management error: its text becomes `data` as a bare string."""


@dataclass
class TritonServer:
    """A registered Triton server, keyed by (vm_ip, container_id)."""

    vm_id: str
    vm_ip: str
    container_id: str
    model_name: str
    protocol: str
    # TCM's per-client LRU of registered SHM regions: (key, byte_size) (infer.py:402-458).
    shm_cache: OrderedDict[tuple[str, int], None] = field(default_factory=OrderedDict)


@dataclass
class Registry:
    """VMs, containers (the Docker cache) and registered servers."""

    vms: dict[str, str] = field(default_factory=dict)  # vm_id -> vm_ip
    containers: dict[str, str] = field(default_factory=dict)  # container_id -> vm_ip
    servers: dict[tuple[str, str], TritonServer] = field(default_factory=dict)
    # Regions Triton has registered, per Triton host: key -> byte_size. TCM never unregisters them.
    triton_regions: dict[str, dict[str, int]] = field(default_factory=dict)
    _ips: itertools.count[int] = field(default_factory=lambda: itertools.count(10))

    @classmethod
    def initial(cls) -> Registry:
        """One registered target serving the zoo: 127.0.0.1 / ref-0."""
        registry = cls()
        registry.vms["ref-vm-0"] = "127.0.0.1"
        registry.containers["ref-0"] = "127.0.0.1"
        registry.servers[("127.0.0.1", "ref-0")] = TritonServer(
            "ref-vm-0", "127.0.0.1", "ref-0", "zoo", "http"
        )
        return registry

    # -- inference routing ------------------------------------------------------------------

    def check_container(self, vm_ip: str, container_id: str) -> None:
        """The Docker-cache check (base.py:10-23); raises ValueError with the manager's text."""
        found_on = self.containers.get(container_id)
        if found_on is None:
            raise ValueError(f"Container '{container_id[:12]}' not found in known containers")
        if found_on != vm_ip:
            raise ValueError(
                f"Container '{container_id}' is not on VM '{vm_ip}' (found on '{found_on}')"
            )

    def register_shm(
        self, server: TritonServer | None, vm_ip: str, key: str, byte_size: int, model: str
    ) -> None:
        """Register an SHM region on the target Triton the way TCM does (contract §9).

        A registered server caches (key, byte_size) so reuse works; a transient client starts
        with an empty cache, and Triton refuses a second region on a key it already holds.
        """
        if server is not None and (key, byte_size) in server.shm_cache:
            server.shm_cache.move_to_end((key, byte_size))
            return
        regions = self.triton_regions.setdefault(vm_ip, {})
        if key in regions:
            raise TritonError(
                "TRITON_SHM_REGISTRATION_FAILED",
                model,
                f"[500] Invalid shared memory region: '{key}'",
            )
        regions[key] = byte_size
        if server is not None:
            server.shm_cache[(key, byte_size)] = None
            while len(server.shm_cache) > SHM_CACHE_SIZE:
                server.shm_cache.popitem(last=False)

    # -- management actions -----------------------------------------------------------------

    def run_action(self, action: str, payload: dict[str, Any]) -> Any:
        """Run one management action; returns the success `data` or raises."""
        handler = _ACTIONS.get(action)
        if handler is None:
            raise ManagementFailure(f"Job action not found: '{action}'")
        return handler(self, payload)

    def _create_vm(self, payload: dict[str, Any]) -> list[str]:
        openstack = _section(payload, "openstack")
        missing = [k for k in CREATION_VARIABLES if k not in openstack]
        if missing:
            raise ManagementFailure(f"Missing required creation variables: {missing}")
        vm_id = str(uuid.uuid4())
        vm_ip = f"10.77.0.{next(self._ips)}"
        self.vms[vm_id] = vm_ip
        return [vm_ip, vm_id]

    def _create_container(self, payload: dict[str, Any]) -> list[Any]:
        """A container on a VM of the OpenStack cache; client-supplied IPs are refused.

        The data echoes the docker config, MinIO credentials included as environment
        variables, as the real manager does (creation/container.py:91-124).
        """
        docker = _section(payload, "docker")
        if "image" not in docker:
            raise ManagementFailure("Missing required docker field: 'image'")
        vm_id = _lookup(payload, "vm_id", "openstack") or payload.get("openstack_vm_id")
        if not vm_id:
            raise ManagementFailure(
                "Missing required field 'vm_id' (top level, openstack.vm_id or openstack_vm_id)"
            )
        vm_ip = self.vms.get(str(vm_id))
        if vm_ip is None:
            raise ManagementFailure(f"VM '{vm_id}' not found in the OpenStack cache")
        container_id = secrets.token_hex(32)
        self.containers[container_id] = vm_ip
        minio = payload.get("minio") if isinstance(payload.get("minio"), dict) else {}
        environment = dict(docker.get("environment") or {})
        environment.update({f"MINIO_{k.upper()}": str(v) for k, v in (minio or {}).items()})
        docker_config = {**docker, "environment": environment}
        return [container_id, docker_config]

    def _create_server(self, payload: dict[str, Any]) -> dict[str, Any]:
        vm_id = _lookup(payload, "vm_id", "openstack")
        vm_ip = _lookup(payload, "vm_ip", "openstack") or self.vms.get(str(vm_id), "")
        container_id = _lookup(payload, "container_id", "docker")
        if not vm_ip or not container_id:
            raise ManagementFailure("create_server needs vm_ip (or vm_id) and container_id")
        try:
            self.check_container(str(vm_ip), str(container_id))
        except ValueError as exc:
            raise ManagementFailure(str(exc)) from None
        model = _model_of(payload)
        server = TritonServer(
            str(vm_id or ""),
            str(vm_ip),
            str(container_id),
            model.name,
            "grpc" if model.decoupled else "http",
        )
        self.servers[(server.vm_ip, server.container_id)] = server
        return model.config()

    def _creation(self, payload: dict[str, Any]) -> dict[str, Any]:
        model = _model_of(payload)  # fail before creating anything
        vm_ip, vm_id = self._create_vm(payload)
        try:
            container_id = self._create_container({**payload, "vm_id": vm_id})[0]
            try:
                self._create_server(
                    {**payload, "vm_id": vm_id, "vm_ip": vm_ip, "container_id": container_id}
                )
            except Exception:
                self.containers.pop(container_id, None)
                raise
        except Exception:
            self.vms.pop(vm_id, None)  # roll back the VM, as creation.py does
            raise
        return {"vm_ip": vm_ip, "container_id": container_id, **model.config()}

    def _deletion(self, payload: dict[str, Any]) -> dict[str, Any]:
        container_id = _lookup(payload, "container_id", "docker")
        vm_id = _lookup(payload, "vm_id", "openstack")
        if vm_id is None and "vm_ip" in payload:
            vm_id = next((i for i, ip in self.vms.items() if ip == payload["vm_ip"]), None)
        failures = []
        vm_ip = self.vms.get(str(vm_id))
        if self.servers.pop((str(vm_ip), str(container_id)), None) is None:
            failures.append(f"Server ({vm_ip}, {container_id}) not found")
        if self.containers.pop(str(container_id), None) is None:
            failures.append(f"Container '{container_id}' not found")
        if self.vms.pop(str(vm_id), None) is None:
            failures.append(f"VM '{vm_id}' not found")
        if failures:
            raise ManagementFailure("; ".join(failures))
        return {"vm_id": vm_id, "container_id": container_id}

    def _delete_server(self, payload: dict[str, Any]) -> dict[str, Any]:
        vm_id, container_id = payload["vm_id"], payload["container_id"]  # top level only
        vm_ip = self.vms.get(vm_id)
        if self.servers.pop((str(vm_ip), container_id), None) is None:
            raise ManagementFailure(f"Server ({vm_ip}, {container_id}) not found")
        return payload

    def _delete_container(self, payload: dict[str, Any]) -> None:
        container_id = payload["container_id"]
        payload["vm_id"]
        if self.containers.pop(container_id, None) is None:
            raise ManagementFailure(f"Container '{container_id}' not found")

    def _delete_vm(self, payload: dict[str, Any]) -> None:
        vm_id = payload["vm_id"]
        payload["container_id"]
        if self.vms.pop(vm_id, None) is None:
            raise ManagementFailure(f"VM '{vm_id}' not found")


def _section(payload: dict[str, Any], name: str) -> dict[str, Any]:
    section = payload.get(name)
    if not isinstance(section, dict):
        raise ManagementFailure(f"Missing required section '{name}'")
    return section


def _lookup(payload: dict[str, Any], key: str, nested_under: str) -> Any:
    """A key at top level, or nested under `openstack`/`docker` (server.py normalisation)."""
    if key in payload:
        return payload[key]
    section = payload.get(nested_under)
    return section.get(key) if isinstance(section, dict) else None


def _model_of(payload: dict[str, Any]) -> Model:
    triton = payload.get("triton") if isinstance(payload.get("triton"), dict) else {}
    minio = payload.get("minio") if isinstance(payload.get("minio"), dict) else {}
    name = (triton or {}).get("model_name") or (minio or {}).get("folder")
    if not name:
        raise ManagementFailure("TRITON_MISSING_ARGUMENT: triton.model_name is required")
    model = MODELS.get(str(name))
    if model is None:
        raise ManagementFailure(f"TRITON_MODEL_LOAD_FAILED: model '{name}' is not in the zoo")
    return model


_ACTIONS: dict[str, Any] = {
    "creation": Registry._creation,
    "deletion": Registry._deletion,
    "create_vm": Registry._create_vm,
    "create_container": Registry._create_container,
    "create_server": Registry._create_server,
    "delete_server": Registry._delete_server,
    "delete_container": Registry._delete_container,
    "delete_vm": Registry._delete_vm,
}
# Every action management runs (config/jobs.yaml:21); anything else is 'Job action not found'.
MANAGEMENT_ACTIONS = frozenset(_ACTIONS)
