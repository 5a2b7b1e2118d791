"""Affinity: what was created through one manager goes back to that manager.

Each TCM replica has a registry of its own (contract §14): a VM, container or server created
through replica A is unknown to replica B. The client remembers, for everything its management
calls create, the manager that created it, and routes later requests about it there.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..results import Target
from .managers import Manager, Managers


def affinity_keys(
    *, vm_id: object = None, vm_ip: object = None, container_id: object = None
) -> list[str]:
    """The names under which a manager's creations are remembered, most specific first: the
    server (vm_ip and container_id, what an inference names), the container, the VM."""
    keys = []
    if vm_ip and container_id:
        keys.append(f"target:{vm_ip}/{container_id}")
    if container_id:
        keys.append(f"container:{container_id}")
    if vm_id:
        keys.append(f"vm:{vm_id}")
    return keys


class Affinity:
    """The manager of each thing created through this client (nothing with one manager)."""

    def __init__(self, managers: Managers, *, enabled: bool) -> None:
        self._managers = managers
        self._enabled = enabled
        self._owners: dict[str, Manager] = {}

    def manager_named(self, url: str) -> Manager:
        """The manager of this client at `url` (a `Target` may name one)."""
        for manager in self._managers.all:
            if manager.url == url:
                return manager
        known = ", ".join(m.url for m in self._managers.all)
        raise ValueError(f"{url!r} is not one of this client's managers ({known})")

    def route(self, target: Target, transient: bool) -> Manager | None:
        """The manager an inference for `target` must go to, None for any: the one the
        target names, else (unless the request allows a transient server, which any manager
        serves) the one that created its server."""
        if target.manager is not None:
            return self.manager_named(target.manager)
        if transient or not self._owners:  # the usual case: no keys built per request
            return None
        return self.routed(affinity_keys(vm_ip=target.vm_ip, container_id=target.container_id))

    def routed(self, keys: Iterable[str]) -> Manager | None:
        """The manager that created the first of these things (`affinity_keys`), if any."""
        if not self._owners:
            return None
        for key in keys:
            manager = self._owners.get(key)
            if manager is not None:
                return manager
        return None

    def pin(self, keys: Iterable[str], manager: Manager | None) -> None:
        """Route later requests about these things to the manager that created them."""
        if manager is not None and self._enabled:
            for key in keys:
                self._owners[key] = manager

    def unpin(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._owners.pop(key, None)
