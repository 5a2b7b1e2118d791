"""Plugin discovery: carriers (`anytcm.carriers`) and transports (`anytcm.transports`).

Plugins are found by reading installed distributions' metadata, and imported only when named or
chosen (loading a plugin runs its code). `ANYTCM_DISABLE_PLUGIN_AUTOLOAD=1` turns discovery off,
leaving the built-ins and what is registered explicitly with `register_carrier` /
`register_transport`. An explicit registration wins over an entry point of the same name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from .carriers import Carrier
from .errors import UnknownCarrier
from .transports import TransportFactory

CARRIER_GROUP = "anytcm.carriers"
TRANSPORT_GROUP = "anytcm.transports"
AUTOLOAD_VARIABLE = "ANYTCM_DISABLE_PLUGIN_AUTOLOAD"

# Install hints for plugins this project knows of (fsspec's `known_implementations` idea).
# They ship in the anytcm repository (plugins/), not on PyPI: the hint names the checkout path.
KNOWN_PLUGINS = {
    "zstd": "pip install ./plugins/anytcm-zstd (from an anytcm checkout)",
    "trio-websocket": "pip install ./plugins/anytcm-trio-websocket (from an anytcm checkout)",
}

_T = TypeVar("_T")


@dataclass(frozen=True)
class PluginInfo:
    """A row of `anytcm carriers list`: where a plugin comes from."""

    group: str
    name: str
    value: str  # "module:attribute"
    distribution: str | None
    version: str | None
    loaded: bool


def autoload_enabled() -> bool:
    return os.environ.get(AUTOLOAD_VARIABLE, "") in ("", "0")


class _Registry(Generic[_T]):
    """A keyed registry: explicit registrations, then entry points, loaded on first use."""

    def __init__(self, group: str, builtins: dict[str, str]) -> None:
        self.group = group
        self._builtins = builtins  # name -> "module:attribute", always available
        self._explicit: dict[str, _T] = {}
        self._loaded: dict[str, _T] = {}

    def register(self, name: str, plugin: _T) -> None:
        self._explicit[name] = plugin

    def unregister(self, name: str) -> None:
        self._explicit.pop(name, None)
        self._loaded.pop(name, None)

    def _entry_points(self) -> dict[str, EntryPoint]:
        found: dict[str, EntryPoint] = {}
        if autoload_enabled():
            for entry in entry_points(group=self.group):
                found.setdefault(entry.name, entry)  # the first of a name wins
        return found

    def names(self) -> list[str]:
        return sorted(set(self._builtins) | set(self._explicit) | set(self._entry_points()))

    def get(
        self,
        name: str,
        missing: Callable[[str, list[str]], Exception],
        broken: Callable[[str, str], Exception],
    ) -> _T:
        if name in self._explicit:
            return self._explicit[name]
        if name in self._loaded:
            return self._loaded[name]
        target = self._builtins.get(name)
        entry = EntryPoint(name, target, self.group) if target else self._entry_points().get(name)
        if entry is None:
            raise missing(name, self.names())
        try:
            obj: Any = entry.load()
            plugin: _T = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a broken plugin must not look like a bug in anytcm
            message = (
                f"the {self.group} plugin {name!r} ({entry.value}) failed to load: {exc!r}; "
                "reinstall or remove the distribution that provides it"
            )
            raise broken(name, message) from exc
        self._loaded[name] = plugin
        return plugin

    def listing(self) -> list[PluginInfo]:
        rows = []
        entries = self._entry_points()
        for name in self.names():
            if name in self._explicit:
                obj = self._explicit[name]
                value = f"{type(obj).__module__}:{type(obj).__qualname__}"
                rows.append(PluginInfo(self.group, name, value, None, None, True))
                continue
            entry = entries.get(name)
            if entry is None:  # a built-in not installed as a distribution (editable checkout)
                rows.append(
                    PluginInfo(
                        self.group, name, self._builtins[name], "anytcm", _version(),
                        name in self._loaded,
                    )
                )  # fmt: skip
                continue
            dist = entry.dist
            rows.append(
                PluginInfo(
                    self.group,
                    name,
                    entry.value,
                    dist.name if dist is not None else None,
                    dist.version if dist is not None else None,
                    name in self._loaded,
                )
            )
        return rows


def _version() -> str:
    from . import __version__

    return __version__


_carriers: _Registry[Carrier] = _Registry(
    CARRIER_GROUP,
    {"json": "anytcm.carriers._json:JsonCarrier", "shm": "anytcm.carriers._shm:ShmCarrier"},
)
_transports: _Registry[TransportFactory] = _Registry(
    TRANSPORT_GROUP, {"websockets": "anytcm.transports._websockets:WebsocketsTransportFactory"}
)


def _unknown_carrier(name: str, known: list[str]) -> Exception:
    hint = KNOWN_PLUGINS.get(name)
    install = f"; install it with `{hint}`" if hint else ""
    return UnknownCarrier(
        f"no carrier named {name!r} is installed (known: {known}){install}. A carrier plugin "
        f"registers an entry point in the {CARRIER_GROUP!r} group",
        name=name,
    )


def _unknown_transport(name: str, known: list[str]) -> Exception:
    hint = KNOWN_PLUGINS.get(name)
    install = f"; install it with `{hint}`" if hint else ""
    return LookupError(
        f"no transport named {name!r} is installed (known: {known}){install}. A transport "
        f"plugin registers an entry point in the {TRANSPORT_GROUP!r} group"
    )


def load_carrier(name: str) -> Carrier:
    """The carrier registered under `name` (imported on first use); UnknownCarrier if none."""
    return _carriers.get(name, _unknown_carrier, lambda n, msg: UnknownCarrier(msg, name=n))


def load_transport(name: str) -> TransportFactory:
    """The transport factory registered under `name`; LookupError with a hint if none."""
    return _transports.get(name, _unknown_transport, lambda n, msg: LookupError(msg))


def register_carrier(carrier: Carrier) -> None:
    """Register a carrier instance under its `name` (wins over an entry point of that name)."""
    _carriers.register(carrier.name, carrier)


def unregister_carrier(name: str) -> None:
    _carriers.unregister(name)


def register_transport(name: str, factory: TransportFactory) -> None:
    _transports.register(name, factory)


def carrier_names() -> list[str]:
    return _carriers.names()


def list_plugins() -> list[PluginInfo]:
    """Every known carrier and transport, with the distribution and version providing it."""
    return _carriers.listing() + _transports.listing()
