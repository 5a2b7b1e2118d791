"""The `anytcm` command line: global options, `ready`, `queue-stats`, `carriers list`, errors.

Commands run in-process through `anytcm.cli.main([...])` (which exits like the real command)
against the session's reference manager (tests/conftest.py), on asyncio and trio via
`--backend`; the exit-code and no-traceback promises are also checked on a real
`python -m anytcm` subprocess.
`infer` is in test_cli_infer.py, `demo` (and Ctrl-C) in test_cli_demo.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli_helpers import BACKENDS, assert_one_line_error, cli, run_anytcm
from _client_helpers import free_port
from anytcm.testing import ReferenceManager


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's $ANYTCM_URL / $ANYTCM_TOKEN must not leak into these tests."""
    monkeypatch.delenv("ANYTCM_URL", raising=False)
    monkeypatch.delenv("ANYTCM_TOKEN", raising=False)


# -- ready -----------------------------------------------------------------------------------


def test_ready_answers_zero_and_json(
    manager: ReferenceManager, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = cli(capsys, "ready", "--url", manager.ws_url, "--backend", backend)
    assert text.code == 0
    assert "ready" in text.out
    assert manager.ws_url in text.out
    assert text.err == ""
    as_json = cli(capsys, "--json", "ready", "--url", manager.ws_url, "--backend", backend)
    assert as_json.code == 0
    document = as_json.json()
    assert document["ready"] is True
    assert document["status_code"] == 200
    assert document["body"]["status"] == "ready"


def test_ready_not_ready_is_exit_1(
    manager: ReferenceManager, capsys: pytest.CaptureFixture[str]
) -> None:
    manager.set_faults(ready_503_seconds=30)
    try:
        outcome = cli(capsys, "ready", "--url", manager.ws_url, "--json")
    finally:
        manager.reset_faults()
    assert outcome.code == 1
    document = outcome.json()
    assert document["ready"] is False
    assert document["status_code"] == 503
    assert document["process_up"] is True
    assert_one_line_error(outcome.err, "not ready", "503")


def test_ready_subprocess_against_running_manager_and_closed_port(
    manager: ReferenceManager,
) -> None:
    up = run_anytcm("ready", "--url", manager.ws_url)
    assert up.returncode == 0, up.stderr
    assert "ready" in up.stdout
    closed = f"ws://127.0.0.1:{free_port()}/ws"
    down = run_anytcm("ready", "--url", closed, "--json")
    assert down.returncode == 2
    assert json.loads(down.stdout)["status_code"] is None
    assert_one_line_error(down.stderr, "cannot reach a manager", closed, "ConnectionRefused")


# -- queue-stats -------------------------------------------------------------------------------


def test_queue_stats_once(
    manager: ReferenceManager, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The session's manager may still be running inferences an earlier module abandoned (they
    # finish within seconds): wait for its 5 workers to be free again.
    deadline = time.monotonic() + 15
    while True:
        as_json = cli(
            capsys, "queue-stats", "--url", manager.ws_url, "--json", "--backend", backend
        )
        assert as_json.code == 0, as_json.err
        stats = as_json.json()
        if stats["executor_inference_available"] == 5 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats["executor_inference_available"] == 5  # the reference manager's 5 workers
    assert {"total_users", "total_queued", "info_users"} <= set(stats)
    table = cli(capsys, "queue-stats", "--url", manager.ws_url, "--backend", backend)
    assert table.code == 0
    assert "executor_inference_available" in table.out
    assert "5" in table.out


def test_queue_stats_load_mode_json(
    manager: ReferenceManager, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = cli(
        capsys,
        *("queue-stats", "--url", manager.ws_url, "--json", "--backend", backend),
        *("--repeat", "300", "--concurrency", "8"),
    )
    assert outcome.code == 0, outcome.err
    report = outcome.json()
    assert report["requests"] == 300
    assert report["succeeded"] == 300
    assert report["failed"] == 0
    assert report["concurrency"] == 8
    assert report["requests_per_second"] > 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]


def test_queue_stats_load_mode_table(
    manager: ReferenceManager, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = cli(
        capsys, "queue-stats", "--url", manager.ws_url, "--repeat", "50", "--concurrency", "4"
    )
    assert outcome.code == 0, outcome.err
    for label in ("p50", "p95", "p99", "req/s", "50 (50 ok, 0 failed)", "pool of 4"):
        assert label in outcome.out
    assert " ms" in outcome.out


def test_queue_stats_concurrency_needs_repeat(
    manager: ReferenceManager, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = cli(capsys, "queue-stats", "--url", manager.ws_url, "--concurrency", "4")
    assert outcome.code == 2
    assert_one_line_error(outcome.err, "--repeat")


def test_connection_refused_fails_fast_with_exit_2(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"ws://127.0.0.1:{free_port()}/ws"
    outcome = cli(capsys, "queue-stats", "--url", closed, "--backend", backend, "--json")
    assert outcome.code == 2
    assert_one_line_error(outcome.err, "ConnectError", "cannot reach a manager", closed)
    error = outcome.json()["error"]
    assert error["type"] == "ConnectError"
    assert error["exit_code"] == 2


# -- global options -----------------------------------------------------------------------------


def test_url_from_environment_and_global_options_on_either_side(
    manager: ReferenceManager, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANYTCM_URL", manager.ws_url)
    assert cli(capsys, "ready").code == 0
    before = cli(capsys, "--json", "--timeout", "5", "ready")
    after = cli(capsys, "ready", "--json", "--timeout", "5")
    assert before.json()["url"] == after.json()["url"] == manager.ws_url
    # --url given on the command line beats the environment.
    closed = f"ws://127.0.0.1:{free_port()}/ws"
    assert cli(capsys, "--url", closed, "ready").code == 2


def test_bad_url_and_bad_options_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "ready", "--url", "http://127.0.0.1:1/ws").code == 2
    assert cli(capsys, "ready", "--timeout", "0").code == 2
    assert cli(capsys, "ready", "--backend", "curio").code == 2
    assert cli(capsys, "queue-stats", "--repeat", "0").code == 2
    monkeypatch.setenv("ANYTCM_URL", "127.0.0.1:8000")
    outcome = cli(capsys, "ready")
    assert outcome.code == 2
    assert_one_line_error(outcome.err, "$ANYTCM_URL", "not a WebSocket URL")


def test_token_from_environment_is_used_and_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "cli-secret-token-7f3a"
    with ReferenceManager(token=secret) as guarded:
        monkeypatch.setenv("ANYTCM_TOKEN", secret)
        ok = cli(capsys, "queue-stats", "--url", guarded.ws_url, "--json")
        assert ok.code == 0, ok.err
        assert "total_users" in ok.json()
        wrong = "wrong-token-91c2"
        refused = cli(capsys, "queue-stats", "--url", guarded.ws_url, "--token", wrong)
        assert refused.code == 2
        assert_one_line_error(refused.err, "AuthError")
        for text in (ok.out, ok.err, refused.out, refused.err):
            assert secret not in text
            assert wrong not in text
    helptext = cli(capsys, "queue-stats", "--help")
    assert helptext.code == 0
    assert "ANYTCM_TOKEN" in helptext.out
    assert secret not in helptext.out


def test_token_from_a_file_keeps_it_off_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "cli-file-token-2b7e"
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n", encoding="utf-8")
    with ReferenceManager(token=secret) as guarded:
        ok = cli(capsys, "queue-stats", "--url", guarded.ws_url, "--token-file", str(token_file))
        assert ok.code == 0, ok.err
        missing = cli(capsys, "ready", "--token-file", str(tmp_path / "absent"))
        assert missing.code == 2
        assert_one_line_error(missing.err, "--token-file", "No such file")
        token_file.write_text("\n", encoding="utf-8")
        empty = cli(capsys, "ready", "--token-file", str(token_file))
        assert empty.code == 2
        assert_one_line_error(empty.err, "the file is empty")
        both = cli(capsys, "ready", "--token", "x", "--token-file", str(token_file))
        assert both.code == 2  # one source of the token, not two
    for text in (ok.out, ok.err, missing.err, empty.err):
        assert secret not in text


# -- carriers list ----------------------------------------------------------------------------


def test_carriers_list_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    as_json = cli(capsys, "carriers", "list", "--json")
    assert as_json.code == 0
    listing = as_json.json()
    carriers = {row["name"]: row for row in listing["carriers"]}
    assert carriers["json"]["distribution"] == "anytcm"
    assert carriers["json"]["object"] == "anytcm.carriers._json:JsonCarrier"
    assert carriers["shm"]["version"]
    assert "zstd" in carriers  # plugins/anytcm-zstd is installed in the test environment
    assert carriers["zstd"]["distribution"] == "anytcm-zstd"
    transports = {row["name"] for row in listing["transports"]}
    assert "websockets" in transports
    table = cli(capsys, "carriers", "list")
    assert table.code == 0
    for text in ("anytcm.carriers._shm:ShmCarrier", "anytcm-zstd", "websockets", "transports"):
        assert text in table.out


def test_without_rich_tables_give_an_install_hint_and_json_still_works() -> None:
    hide_rich = (
        "import sys; sys.modules['rich'] = None; from anytcm.cli import main; main(sys.argv[1:])"
    )
    table = subprocess.run(
        [sys.executable, "-c", hide_rich, "carriers", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert table.returncode == 2
    assert_one_line_error(table.stderr, 'pip install "anytcm[cli]"')
    as_json = subprocess.run(
        [sys.executable, "-c", hide_rich, "carriers", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["carriers"]


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    helptext = cli(capsys, "--help")
    assert helptext.code == 0
    for command in ("demo", "ready", "queue-stats", "infer", "carriers", "serve-dev"):
        assert command in helptext.out
    assert "exit codes" in helptext.out
    assert cli(capsys, "--version").out.startswith("anytcm ")
    assert cli(capsys).code == 2  # no command: usage error


def test_not_ready_manager_is_one_line_exit_1_and_verbose_logs(manager: ReferenceManager) -> None:
    """The client logs warnings while it waits for /ready: without -v they must not add lines
    to the one-line error; with -v the client's log is on stderr."""
    manager.set_faults(ready_503_seconds=30)
    try:
        waited = run_anytcm("queue-stats", "--url", manager.ws_url, "--timeout", "1")
    finally:
        manager.reset_faults()
    assert waited.returncode == 1
    assert_one_line_error(waited.stderr, "not ready", "503")
    verbose = run_anytcm("queue-stats", "--url", manager.ws_url, "--json", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "anytcm.pool" in verbose.stderr  # "connected <uuid> (capabilities ...)"
    assert "total_users" in json.loads(verbose.stdout)
