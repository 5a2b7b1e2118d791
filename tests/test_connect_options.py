"""`anytcm.ConnectOptions`: the one declaration of the options of `connect`, `SyncClient` and
the CLI, and the guards that keep its pieces from drifting apart."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import anytcm
from anytcm import options as options_module
from anytcm.cli._context import CliContext
from anytcm.client import connect
from anytcm.options import ConnectOptions, ConnectSettings
from anytcm.sync_client import SyncClient


def documented_options() -> dict[str, str]:
    """Each key of `ConnectOptions` and the docstring under it, read from the source (where
    Sphinx reads it too)."""
    tree = ast.parse(Path(inspect.getfile(options_module)).read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ConnectOptions"]
    docs: dict[str, str] = {}
    body = cls.body
    for statement, following in zip(body, [*body[1:], None], strict=True):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            doc = ""
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                doc = inspect.cleandoc(following.value.value)
            docs[statement.target.id] = doc
    return docs


def test_the_options_and_their_defaults_list_the_same_names_in_the_same_order() -> None:
    fields = [field.name for field in dataclasses.fields(ConnectSettings)]
    assert list(ConnectOptions.__annotations__) == fields
    assert ConnectOptions.__optional_keys__ == frozenset(fields)  # every option may be left out


def test_each_option_has_the_type_of_its_setting() -> None:
    assert typing.get_type_hints(ConnectOptions) == typing.get_type_hints(ConnectSettings)


def test_each_option_is_documented_with_its_real_default() -> None:
    """The documentation states each default in words; here it must match the value used."""
    docs = documented_options()
    assert list(docs) == list(ConnectOptions.__annotations__)
    for field in dataclasses.fields(ConnectSettings):
        doc = " ".join(docs[field.name].split())
        spelled = f'"{field.default}"' if isinstance(field.default, str) else repr(field.default)
        assert f"Default `{spelled}`" in doc, (
            f"{field.name}: the doc should say Default `{spelled}`"
        )


def test_connect_and_sync_client_take_the_options_and_nothing_else() -> None:
    def parameters(func: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
        return [
            (p.name, p.kind, p.annotation)
            for p in inspect.signature(func).parameters.values()
            if p.name != "self"
        ]

    options = ("options", inspect.Parameter.VAR_KEYWORD, "Unpack[ConnectOptions]")
    url = ("url", inspect.Parameter.POSITIONAL_OR_KEYWORD, "str | Sequence[str]")
    assert parameters(connect) == [url, options]
    assert parameters(SyncClient.__init__) == [
        url,
        ("backend", inspect.Parameter.KEYWORD_ONLY, "str"),
        ("backend_options", inspect.Parameter.KEYWORD_ONLY, "dict[str, Any] | None"),
        options,
    ]


def test_the_cli_maps_its_global_options_onto_connect_options() -> None:
    context = CliContext(url="ws://127.0.0.1:1/ws", token="s3cret", timeout=3.0)
    mapped = context.connect_options(pool_size=2)
    assert set(mapped) <= set(ConnectOptions.__annotations__)
    assert mapped == {"token": "s3cret", "pool_size": 2, "timeout": 3.0, "connect_timeout": 3.0}
    ConnectSettings.from_options(mapped, caller="the CLI")  # values the client accepts


def test_connect_options_is_exported() -> None:
    assert anytcm.ConnectOptions is ConnectOptions
    assert "ConnectOptions" in anytcm.__all__


def test_defaults_are_what_connect_documents() -> None:
    settings = ConnectSettings()
    assert (settings.pool_size, settings.timeout, settings.capabilities) == (4, 30.0, "auto")
    assert settings.max_frame_bytes == 65536
    assert "s3cret" not in repr(ConnectSettings(token="s3cret"))  # a secret: never in a repr


# -- wrong options fail at once, naming what is wrong -------------------------------------------


@pytest.mark.parametrize(
    ("make", "caller"),
    [
        (lambda **kw: connect("ws://127.0.0.1:1/ws", **kw), "connect()"),
        (lambda **kw: SyncClient("ws://127.0.0.1:1/ws", **kw), "SyncClient()"),
    ],
    ids=["connect", "SyncClient"],
)
def test_an_unknown_option_is_a_type_error_naming_it(
    make: Callable[..., object], caller: str
) -> None:
    threads = set(threading.enumerate())
    with pytest.raises(TypeError) as raised:
        make(pool_sise=2)
    assert str(raised.value) == (
        f"{caller} got an unexpected keyword argument 'pool_sise'; did you mean 'pool_size'?"
    )
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'frobnicate'$"):
        make(frobnicate=True)
    with pytest.raises(ValueError, match="pool_size must be at least 1"):
        make(pool_size=0)
    with pytest.raises(ValueError, match="max_waiting must be >= 0"):
        make(max_waiting=-1)
    assert set(threading.enumerate()) == threads  # SyncClient checked before starting a thread


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        connect("ws://127.0.0.1:1/ws", None)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        SyncClient("ws://127.0.0.1:1/ws", "asyncio")  # type: ignore[call-arg]


# -- a dict of options reaches the client ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("tcm_client_options", [{"pool_size": 2, "uuid": "opts"}])
async def test_options_given_as_a_dict_reach_the_client(tcm_client: anytcm.AsyncClient) -> None:
    assert "pool_size=2" in repr(tcm_client)
    assert tcm_client._pool.settings.base_uuid == "opts"
