"""`anytcm carriers list`: every carrier and transport plugin, and who provides it.

The answer to "why does my client not use zstd?" starts here: is the carrier installed at all,
from which distribution and version. Listing reads installed metadata only; it imports no
plugin (loading a plugin runs its code), so a broken plugin cannot break the listing.
"""

from __future__ import annotations

from typing import Any

from ..plugins import CARRIER_GROUP, TRANSPORT_GROUP, PluginInfo, autoload_enabled, list_plugins
from ._context import CliContext
from ._errors import EXIT_OK
from ._output import console, print_json, print_table


def run_carriers_list(context: CliContext) -> int:
    plugins = list_plugins()
    if context.json:
        print_json(
            {
                "autoload": autoload_enabled(),
                "carriers": [_row(p) for p in plugins if p.group == CARRIER_GROUP],
                "transports": [_row(p) for p in plugins if p.group == TRANSPORT_GROUP],
            }
        )
        return EXIT_OK
    out = console()
    for group, title in ((CARRIER_GROUP, "carriers"), (TRANSPORT_GROUP, "transports")):
        print_table(
            f"{title} (entry points {group!r})",
            [("name", "left"), ("provided by", "left"), ("version", "left"), ("object", "left")],
            [
                (p.name, p.distribution or "(registered in code)", p.version or "", p.value)
                for p in plugins
                if p.group == group
            ],
            out=out,
        )
    if not autoload_enabled():
        out.print("plugin discovery is off (ANYTCM_DISABLE_PLUGIN_AUTOLOAD): built-ins only")
    return EXIT_OK


def _row(plugin: PluginInfo) -> dict[str, Any]:
    return {
        "name": plugin.name,
        "distribution": plugin.distribution,
        "version": plugin.version,
        "object": plugin.value,
        "loaded": plugin.loaded,
    }
