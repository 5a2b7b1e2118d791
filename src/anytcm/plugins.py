"""Plugin discovery: carriers (`anytcm.carriers`) and transports (`anytcm.transports`).

Plugins are found by reading installed distributions' metadata, and imported only when named or
chosen (loading a plugin runs its code). `ANYTCM_DISABLE_PLUGIN_AUTOLOAD=1` turns discovery off,
leaving the built-ins and what is registered explicitly with `register_carrier` /
`register_transport`. An explicit registration wins over an entry point of the same name.

A caller chooses carriers by name, by a preference list, or with ``"auto"``: every installed
carrier that declares an ``auto_rank`` (`anytcm.carriers.Carrier`), in rank order. Working that
out imports every installed carrier plugin, on the first request that uses ``"auto"``; the
order is kept until `register_carrier` or `unregister_carrier` changes the carriers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final, Generic, TypeVar

from .carriers import Carrier, CarrierTraits, carrier_traits
from .errors import CarrierError, UnknownCarrier
from .transports import TransportFactory

logger = logging.getLogger(__name__)

CARRIER_GROUP = "anytcm.carriers"
TRANSPORT_GROUP = "anytcm.transports"
AUTOLOAD_VARIABLE = "ANYTCM_DISABLE_PLUGIN_AUTOLOAD"
#: The carrier choice that stands for every carrier with an ``auto_rank``, in rank order.
AUTO: Final = "auto"

# The built-in plugins, "module:attribute" by name. This table is their only declaration: they
# must be found with autoload off and from a source tree whose metadata is not installed, which
# entry points cannot promise, so anytcm's own pyproject.toml declares no entry points for them.
BUILTIN_CARRIERS: Final = {
    "json": "anytcm.carriers._json:JsonCarrier",
    "shm": "anytcm.carriers._shm:ShmCarrier",
}
BUILTIN_TRANSPORTS: Final = {
    "websockets": "anytcm.transports._websockets:WebsocketsTransportFactory",
}

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
        return self.get_declared(name, missing, broken)

    def get_declared(
        self,
        name: str,
        missing: Callable[[str, list[str]], Exception],
        broken: Callable[[str, str], Exception],
    ) -> _T:
        """The built-in or entry-point plugin of `name`, ignoring explicit registrations."""
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
            entry = None if name in self._builtins else entries.get(name)
            if entry is None:  # a built-in: loaded from the table, whatever else declares it
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
    from ._version import __version__

    return __version__


class _CarrierRegistry(_Registry[Carrier]):
    """The carriers, each with its traits, and the order ``"auto"`` stands for."""

    def __init__(self) -> None:
        super().__init__(CARRIER_GROUP, BUILTIN_CARRIERS)
        self._traits: dict[str, tuple[Carrier, CarrierTraits]] = {}
        self._auto: dict[bool, tuple[str, ...]] = {}  # stream -> names
        self._first: dict[str, tuple[Carrier, CarrierTraits] | None] = {}  # choice -> carrier

    def register(self, name: str, plugin: Carrier) -> None:
        super().register(name, plugin)
        self._forget()

    def unregister(self, name: str) -> None:
        super().unregister(name)
        self._forget()

    def _forget(self) -> None:
        self._traits.clear()
        self._auto.clear()
        self._first.clear()

    def first(self, choice: str) -> tuple[Carrier, CarrierTraits] | None:
        try:
            return self._first[choice]
        except KeyError:
            pass
        names = resolve_carriers(choice)
        found = self.with_traits(names[0]) if names else None
        self._first[choice] = found
        return found

    def load(self, name: str) -> Carrier:
        return self.get(name, _unknown_carrier, _broken_carrier)

    def with_traits(self, name: str) -> tuple[Carrier, CarrierTraits]:
        found = self._traits.get(name)
        if found is not None:
            return found
        carrier = self.load(name)
        replaced: Carrier | None = None
        if name in self._explicit:
            try:
                replaced = self.get_declared(name, _unknown_carrier, _broken_carrier)
            except CarrierError:
                replaced = None  # nothing (loadable) declared under that name
        found = (carrier, carrier_traits(carrier, replaces=replaced))
        self._traits[name] = found
        return found

    def auto(self, *, stream: bool) -> tuple[str, ...]:
        order = self._auto.get(stream)
        if order is not None:
            return order
        ranked: list[tuple[int, str]] = []
        for name in self.names():
            try:
                traits = self.with_traits(name)[1]
            except (CarrierError, TypeError) as exc:  # named, it raises; "auto" goes on without it
                logger.warning("carrier %r left out of 'auto': %s", name, exc)
                continue
            if traits.auto_rank is not None and (traits.serves_streams or not stream):
                ranked.append((traits.auto_rank, name))
        order = tuple(name for _, name in sorted(ranked))
        self._auto[stream] = order
        return order


_carriers = _CarrierRegistry()
_transports: _Registry[TransportFactory] = _Registry(TRANSPORT_GROUP, BUILTIN_TRANSPORTS)


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


def _broken_carrier(name: str, message: str) -> Exception:
    return UnknownCarrier(message, name=name)


def load_carrier(name: str) -> Carrier:
    """The carrier registered under `name` (imported on first use); UnknownCarrier if none."""
    return _carriers.load(name)


def load_carrier_traits(name: str) -> tuple[Carrier, CarrierTraits]:
    """`load_carrier(name)` with its traits (`anytcm.carriers.carrier_traits`), read once.

    Raises UnknownCarrier as `load_carrier` does, and TypeError for a carrier whose optional
    members have the wrong type.
    """
    return _carriers.with_traits(name)


def first_carrier(choice: str) -> tuple[Carrier, CarrierTraits] | None:
    """The carrier a choice tries first, with its traits (None: ``"auto"`` stands for none).

    The same as `resolve_carriers` then `load_carrier_traits`, remembered until the carriers
    change: the inline fast path asks on every request.
    """
    return _carriers.first(choice)


def resolve_carriers(choice: str | Sequence[str], *, stream: bool = False) -> tuple[str, ...]:
    """The carrier names a choice stands for, in preference order, each once.

    `choice` is a name, ``"auto"``, or a preference list of those. ``"auto"`` expands to the
    carriers with an ``auto_rank`` in rank order (with `stream`, only those that serve gRPC
    streams and pipelines); a carrier that fails to load is left out of it with a warning. Other
    names are not loaded here: an unknown one raises when the client reaches it.
    """
    if isinstance(choice, str):
        return _carriers.auto(stream=stream) if choice == AUTO else (choice,)
    names: dict[str, None] = {}
    for name in choice:
        for expanded in _carriers.auto(stream=stream) if name == AUTO else (name,):
            names.setdefault(expanded, None)
    return tuple(names)


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
