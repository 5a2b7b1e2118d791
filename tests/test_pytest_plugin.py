"""The pytest plugin (anytcm.pytest_plugin), as a user's test suite meets it.

Each test writes a small user project and runs pytest on it in a subprocess, where the plugin
arrives through its `pytest11` entry point exactly as in a user's environment (no conftest, no
import). The user tests are async anyio tests, so they run on asyncio and trio.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import anytcm.pytest_plugin

pytest_plugins = ["pytester"]

# The user project's configuration: as strict as ours, and a hang fails instead of blocking.
INI = """
[pytest]
addopts = --strict-config --strict-markers -p no:cacheprovider
filterwarnings = error
timeout = 60
"""

# Helpers the user test files share: what they record, the outer test checks afterwards.
PREAMBLE = """
import json
import os
from pathlib import Path

import numpy as np
import pytest

import anytcm

pytestmark = pytest.mark.anyio
TARGET = anytcm.Target("127.0.0.1", "ref-0")
X = np.arange(4, dtype=np.float32)


def record(test, backend, manager):
    with Path(__file__).with_name("record.jsonl").open("a") as log:
        log.write(json.dumps([test, backend, manager.pid, manager.ws_url]) + "\\n")
"""


@pytest.fixture(autouse=True)
def _users_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user runs inherit this environment: a transport chosen for our own suite is not the
    user's (trio-websocket would fail every asyncio run)."""
    monkeypatch.delenv("ANYTCM_TRANSPORT", raising=False)


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=PREAMBLE + textwrap.dedent(source))
    return pytester.runpytest_subprocess("-v", *args)


def _records(pytester: pytest.Pytester) -> list[Any]:
    """What the user tests recorded, in run order: [test, backend, manager pid, manager URL]."""
    lines = (pytester.path / "record.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_plugin_is_registered_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    """Installed, it is active in every run (this one included) without being named anywhere."""
    assert pytestconfig.pluginmanager.get_plugin("anytcm") is anytcm.pytest_plugin


@pytest.mark.fault
def test_one_manager_per_session_faults_reset_and_a_dead_manager_revived(
    pytester: pytest.Pytester,
) -> None:
    result = _run(
        pytester,
        """
        async def test_client_infers(tcm_client, tcm_manager, tcm_url, anyio_backend_name):
            record("client_infers", anyio_backend_name, tcm_manager)
            assert tcm_url == tcm_manager.ws_url
            result = await tcm_client.infer("double", {"INPUT0": X}, target=TARGET)
            assert result.as_numpy("OUTPUT0").tolist() == [0.0, 2.0, 4.0, 6.0]


        async def test_leaves_faults_behind(tcm_manager, anyio_backend_name):
            record("leaves_faults", anyio_backend_name, tcm_manager)
            tcm_manager.set_faults(
                hang_fraction=1.0, **{"error.double": "TRITON_INFERENCE_FAILED:9", "latency.x": 5}
            )
            assert tcm_manager.faults()["hang_fraction"] == 1.0


        async def test_faults_were_reset(tcm_client, tcm_manager, anyio_backend_name):
            record("faults_reset", anyio_backend_name, tcm_manager)
            faults = tcm_manager.faults()
            assert (faults["hang_fraction"], faults["errors"], faults["latency_ms"]) == (0, {}, {})
            result = await tcm_client.infer("double", {"INPUT0": X}, target=TARGET, timeout=10)
            assert result.as_numpy("OUTPUT0")[3] == 6.0


        async def test_kills_the_manager(tcm_manager, anyio_backend_name):
            record("kills", anyio_backend_name, tcm_manager)
            tcm_manager.kill()


        async def test_manager_is_back(tcm_client, tcm_manager, anyio_backend_name):
            record("back", anyio_backend_name, tcm_manager)
            assert tcm_manager.running
            result = await tcm_client.infer("double", {"INPUT0": X}, target=TARGET, timeout=10)
            assert result.as_numpy("OUTPUT0")[1] == 2.0


        async def test_pauses_the_manager(tcm_manager, anyio_backend_name):
            record("pauses", anyio_backend_name, tcm_manager)
            tcm_manager.pause()


        async def test_manager_is_resumed(tcm_client, tcm_manager, anyio_backend_name):
            record("resumed", anyio_backend_name, tcm_manager)
            result = await tcm_client.infer("double", {"INPUT0": X}, target=TARGET, timeout=10)
            assert result.as_numpy("OUTPUT0")[2] == 4.0


        @pytest.mark.parametrize("tcm_client_options", [{"pool_size": 1}])
        async def test_client_options(tcm_client):
            assert "pool_size=1" in repr(tcm_client)
            assert (await tcm_client.infer("double", {"INPUT0": X}, target=TARGET)) is not None
        """,
    )
    result.assert_outcomes(passed=16)
    result.stdout.fnmatch_lines(
        ["*test_client_infers?asyncio? PASSED*", "*test_client_infers?trio? PASSED*"]
    )
    records = _records(pytester)
    assert {backend for _, backend, _, _ in records} == {"asyncio", "trio"}
    assert len({url for _, _, _, url in records}) == 1  # revived on the same port
    # One process for the session: the pid changes only where a test killed the manager.
    for (test, backend, pid, _), (_, next_backend, next_pid, _) in itertools.pairwise(records):
        assert (next_pid != pid) == (test == "kills"), (test, backend, next_backend)
    assert len({pid for _, _, pid, _ in records}) == 3


def test_manager_configured_from_ini(pytester: pytest.Pytester) -> None:
    """A token and serve-dev options from the ini; tcm_client passes the token by itself."""
    pytester.makeini(
        INI
        + "anytcm_manager_token = s3cret\n"
        + "anytcm_manager_args = --max-request-payload-mb 0.01\n"
    )
    pytester.makepyfile(
        test_user=PREAMBLE
        + textwrap.dedent(
            """
            async def test_token_and_budget(tcm_client, tcm_manager, tcm_url):
                assert tcm_manager.token == "s3cret"
                await tcm_client.infer("double", {"INPUT0": X}, target=TARGET)
                big = np.zeros(4000, dtype=np.float32)  # 16,000 bytes: over the 0.01 MiB budget
                with pytest.raises(anytcm.InferenceFailed, match="413 Payload Too Large"):
                    await tcm_client.infer("double", {"INPUT0": big}, target=TARGET)
                with pytest.raises(anytcm.AuthError):
                    async with anytcm.connect(tcm_url, connect_timeout=5):
                        pass
            """
        )
    )
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=2)


def test_manager_configured_by_overriding_the_options_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def tcm_manager_options():
            return {"token": "from-conftest", "extra_args": ["--no-shm"]}
        """
    )
    result = _run(
        pytester,
        """
        async def test_token(tcm_client, tcm_manager, anyio_backend_name):
            record("token", anyio_backend_name, tcm_manager)
            assert tcm_manager.token == "from-conftest"
            assert "--no-shm" in tcm_manager.extra_args
            result = await tcm_client.infer("double", {"INPUT0": X}, target=TARGET)
            assert result.as_numpy("OUTPUT0")[1] == 2.0
        """,
    )
    result.assert_outcomes(passed=2)
    assert len({pid for _, _, pid, _ in _records(pytester)}) == 1


def test_a_tls_manager_from_the_options_fixture_is_trusted_by_tcm_client(
    pytester: pytest.Pytester,
) -> None:
    """With `tls` and `ca_file` in the options, tcm_client speaks wss:// trusting that CA (the
    system store would refuse a certificate made for the test)."""
    pytest.importorskip("trustme")
    pytester.makeconftest(
        """
        import pytest
        import trustme

        @pytest.fixture(scope="session")
        def tcm_manager_options(tmp_path_factory):
            directory = tmp_path_factory.mktemp("tls")
            ca = trustme.CA()
            server = ca.issue_cert("127.0.0.1")
            ca.cert_pem.write_to_path(str(directory / "ca.pem"))
            server.private_key_pem.write_to_path(str(directory / "key.pem"))
            (directory / "cert.pem").write_bytes(
                b"".join(blob.bytes() for blob in server.cert_chain_pems)
            )
            return {
                "tls": (str(directory / "cert.pem"), str(directory / "key.pem")),
                "ca_file": str(directory / "ca.pem"),
            }
        """
    )
    result = _run(
        pytester,
        """
        async def test_wss(tcm_client, tcm_url):
            assert tcm_url.startswith("wss://")
            result = await tcm_client.infer("double", {"INPUT0": X}, target=TARGET)
            assert result.as_numpy("OUTPUT0")[3] == 6.0


        async def test_the_system_store_refuses_it(tcm_url):
            with pytest.raises(anytcm.ConnectError):
                async with anytcm.connect(tcm_url, connect_timeout=1):
                    pass
        """,
    )
    result.assert_outcomes(passed=4)


def test_tcm_client_in_a_sync_test_is_a_clear_error(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        def test_sync(tcm_client):
            pass
        """,
    )
    result.assert_outcomes(errors=2)  # once per anyio backend
    result.stdout.fnmatch_lines(["*tcm_client is an async client*@pytest.mark.anyio*"])
    result.stdout.no_fnmatch_line("*Traceback*")


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_unused_plugin_starts_no_manager(pytester: pytest.Pytester) -> None:
    """A suite that asks for no tcm_* fixture pays nothing: no process, no client import."""
    result = _run(
        pytester,
        """
        import sys

        def _managers_of_this_process():
            mine = f"--exit-with-parent\\0{os.getpid()}\\0"
            found = []
            for entry in Path("/proc").iterdir():
                try:
                    cmdline = (entry / "cmdline").read_text()
                except OSError:
                    continue
                if "anytcm.testing" in cmdline and mine in cmdline:
                    found.append(entry.name)
            return found

        def test_nothing_started():
            assert _managers_of_this_process() == []
            assert "anytcm.testing._process" not in sys.modules

        def test_the_probe_sees_a_manager(tcm_manager):
            assert _managers_of_this_process() == [str(tcm_manager.pid)]
        """,
    )
    result.assert_outcomes(passed=2)


def test_importing_the_plugin_imports_no_client_or_server_code() -> None:
    probe = (
        "import sys, anytcm.pytest_plugin;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('anytcm', 'httpx', 'numpy', 'msgspec', 'websockets', 'anyio')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    # `anytcm._version` is the one constant `import anytcm` reads: no client or server code.
    assert out.strip() == "['anytcm', 'anytcm._version', 'anytcm.pytest_plugin']"
