"""Sphinx configuration of the anytcm documentation (`nox -s docs`, built with `-W`).

The pages are Markdown (MyST). The API reference comes from the docstrings, which are written
in a Markdown flavour too: `single backticks` for code and names, and fenced code blocks.
They render without being rewritten thanks to:

* `default_role = "py:obj"`: in reStructuredText a single-backtick span is "interpreted text"
  in the default role. As a Python cross-reference it is shown as code, and becomes a link
  when it names a documented object (`TcmError`, `StagedInputs.release()`); anything else
  (`"auto"`, `request.inputs`) stays plain code, without a warning (`nitpicky` is off).
  Modules are documented with `:no-index:` so that a parameter named like a module
  (`carrier`, `retry`) is not turned into a link to that module.
* `_fenced_code_blocks`: an `autodoc-process-docstring` hook that turns fenced blocks into
  `code-block` directives (reStructuredText has no fences).

The public API is documented under its public names (`anytcm.AsyncClient`), while annotations
name the defining module (`anytcm.client.AsyncClient`); `_public_name` resolves those.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

import anytcm

# `_cli.py` (the CLI reference's parser) lives beside this file.
sys.path.insert(0, str(Path(__file__).parent))
# The CLI's defaults read the environment: the reference must show the documented defaults,
# never the values of whoever builds it (a token least of all).
for _variable in ("ANYTCM_URL", "ANYTCM_TOKEN"):
    os.environ.pop(_variable, None)

project = "anytcm"
author = "anytcm developers"
copyright = "anytcm developers"
release = anytcm.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxarg.ext",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Markdown pages: heading anchors so pages can link to sections (`page.md#section`).
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# Docstrings: single backticks are code, linked when they name something documented.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # `max_message_size=DEFAULT_MAX_MESSAGE_SIZE`, not 268435456
autodoc_typehints = "signature"
autodoc_docstring_signature = False  # signatures come from the code, never from docstrings
python_use_unqualified_type_names = True
python_maximum_signature_line_length = 88  # one parameter per line for long signatures

html_theme = "furo"
html_title = f"anytcm {release}"
html_static_path: list[str] = []
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# Classes documented without a constructor signature: only anytcm creates their instances,
# or they are protocols a plugin implements.
_NO_CONSTRUCTOR_SIGNATURE = frozenset(
    {
        "anytcm.AsyncClient",
        "anytcm.InferStream",
        "anytcm.InferResult",
        "anytcm.client.InfoAPI",
        "anytcm.client.ManagementAPI",
        "anytcm.sync_client.SyncInferStream",
        "anytcm.sync_client.SyncAlerts",
        "anytcm.sync_client.SyncInfoAPI",
        "anytcm.sync_client.SyncManagementAPI",
        "anytcm.carrier.Carrier",
        "anytcm.carrier.StagedInputs",
        "anytcm.transport.Transport",
        "anytcm.transport.TransportFactory",
    }
)

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")


def _fenced_code_blocks(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Rewrite Markdown fences in a docstring as `.. code-block::` directives, in place."""
    out: list[str] = []
    fence_indent: str | None = None
    for line in lines:
        match = _FENCE.match(line)
        if fence_indent is None and match:
            fence_indent = match["indent"]
            if out and out[-1].strip():
                out.append("")
            out += [f"{fence_indent}.. code-block:: {match['language'] or 'text'}", ""]
        elif fence_indent is not None and match and match["indent"] == fence_indent:
            fence_indent = None
            out.append("")
        elif fence_indent is not None:
            out.append(f"{fence_indent}   {line[len(fence_indent) :]}" if line.strip() else "")
        else:
            out.append(line)
    lines[:] = out


def _generated_dataclass_docstring(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Drop the `Name(field: 'type', ...)` docstring `dataclasses` makes up for a class without
    one: the signature above it already says the same, better."""
    if what != "class" or not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        return
    text = [line for line in lines if line.strip()]
    if len(text) == 1 and text[0].startswith(f"{obj.__name__}("):
        lines.clear()


def _class_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    """Class signatures as a user should read them.

    * None for classes only anytcm instantiates (`anytcm.connect` makes the `AsyncClient`) and
      for protocols (implemented, never called): their constructor parameters are internal.
    * A dataclass field's `default_factory` appears as `<factory>`, which is not Python (and
      breaks the one-parameter-per-line layout): show what the factory makes instead.
    """
    if what not in ("class", "exception") or signature is None:
        return None
    if name in _NO_CONSTRUCTOR_SIGNATURE:
        return "", return_annotation
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and "<factory>" in signature:
        for field in dataclasses.fields(obj):
            if field.init and field.default_factory is not dataclasses.MISSING:
                signature = signature.replace("<factory>", repr(field.default_factory()), 1)
        return signature, return_annotation
    return None


def _public_name(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.reference | None:
    """Resolve `anytcm.<module>.<Name>` to `anytcm.<Name>` when that is how it is documented."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("anytcm."):
        return None
    name = target.rsplit(".", 1)[-1]
    if name not in anytcm.__all__:
        return None
    domain: Any = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], f"anytcm.{name}", node, contnode
    )


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-docstring", _fenced_code_blocks)
    app.connect("autodoc-process-docstring", _generated_dataclass_docstring)
    app.connect("autodoc-process-signature", _class_signature)
    app.connect("missing-reference", _public_name)
