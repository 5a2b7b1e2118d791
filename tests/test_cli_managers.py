"""The command line over several managers: `--url` repeated, `$ANYTCM_URL` lists, `anytcm
ready` per manager, and `anytcm serve-dev --replicas N`.

Real reference managers over loopback (`ReferenceCluster`), commands in-process through
`anytcm.cli.main` on both backends, and `serve-dev --replicas` as a real process, signalled
the way a terminal and a service manager signal it. The client's own behaviour over several
managers (spread, failover) is tested in test_managers.py; here, what the command line adds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from _cli_helpers import BACKENDS, assert_one_line_error, cli, run_anytcm
from _client_helpers import free_port
from anytcm.cli import build_parser
from anytcm.cli._serve import replica_arguments
from anytcm.testing import ReferenceCluster
from anytcm.testing._manager.main import build_parser as build_manager_parser

LISTENING = re.compile(
    r"^anytcm reference manager (?P<n>\d+)/(?P<of>\d+) listening on (?P<url>ws://\S+) "
    r"\(pid (?P<pid>\d+)\)$"
)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's $ANYTCM_URL / $ANYTCM_TOKEN must not leak into these tests."""
    monkeypatch.delenv("ANYTCM_URL", raising=False)
    monkeypatch.delenv("ANYTCM_TOKEN", raising=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ReferenceCluster]:
    """Three managers for the module; a test that stops one starts it again (same port)."""
    with ReferenceCluster(3) as running:
        yield running


@pytest.fixture
def replicas(cluster: ReferenceCluster) -> ReferenceCluster:
    """The module's cluster, every manager running (restarted on its port if a test stopped
    it) with no fault switch set."""
    for manager in cluster:
        if not manager.running:
            manager.start()
        manager.reset_faults()
    return cluster


def url_args(urls: list[str]) -> list[str]:
    return [part for url in urls for part in ("--url", url)]


# -- ready, manager by manager -------------------------------------------------------------------


def test_ready_every_manager_ready_is_one_line_each(
    replicas: ReferenceCluster, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = replicas.urls
    outcome = cli(capsys, "ready", *url_args(urls), "--backend", backend)
    assert outcome.code == 0, outcome.err
    assert outcome.err == ""
    assert outcome.out.splitlines() == [f"ready: {url} (GET /ready answered 200)" for url in urls]


def test_ready_with_one_manager_stopped(
    replicas: ReferenceCluster, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = replicas.urls
    replicas[1].kill()
    try:
        text = cli(capsys, "ready", *url_args(urls), "--backend", backend)
        as_json = cli(capsys, "ready", "--json", *url_args(urls), "--backend", backend)
        any_ready = cli(capsys, "ready", "--any", *url_args(urls), "--backend", backend)
    finally:
        replicas[1].start()
    # Every manager reported, in order; the verdict (not all ready) is one line on stderr.
    assert text.code == 1
    lines = text.out.splitlines()
    assert lines[0] == f"ready: {urls[0]} (GET /ready answered 200)"
    assert lines[1].startswith(f"unreachable: {urls[1]} (")  # the cause: backend-worded
    assert lines[2] == f"ready: {urls[2]} (GET /ready answered 200)"
    assert_one_line_error(text.err, "2 of 3 managers ready", "every one", "--any")

    assert as_json.code == 1
    document = as_json.json()
    assert (document["ready"], document["rule"], document["ready_count"]) == (False, "all", 2)
    managers = document["managers"]
    assert [m["url"] for m in managers] == urls
    assert [m["ready"] for m in managers] == [True, False, True]
    assert [m["status_code"] for m in managers] == [200, None, 200]
    assert managers[1]["process_up"] is False

    # --any: the client can be served (two are ready); nothing to complain about.
    assert any_ready.code == 0
    assert any_ready.err == ""
    assert len(any_ready.out.splitlines()) == 3


def test_ready_not_ready_manager_and_any(
    replicas: ReferenceCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = replicas.urls[:2]
    replicas[0].set_faults(ready_503_seconds=30)
    replicas[1].set_faults(ready_503_seconds=30)
    try:
        one_not_ready = cli(capsys, "ready", "--url", urls[0], "--url", replicas.urls[2])
        none_ready = cli(capsys, "ready", "--json", "--any", *url_args(urls))
    finally:
        replicas[0].reset_faults()
        replicas[1].reset_faults()
    assert one_not_ready.code == 1
    assert one_not_ready.out.splitlines()[0].startswith(f"not ready: {urls[0]}: ")
    assert "503" in one_not_ready.out.splitlines()[0]
    # None ready, but they answered: 1 (not 2: there is a manager, it is just not ready).
    assert none_ready.code == 1
    document = none_ready.json()
    assert (document["ready"], document["rule"], document["ready_count"]) == (False, "any", 0)
    assert [m["status_code"] for m in document["managers"]] == [503, 503]
    assert_one_line_error(none_ready.err, "0 of 2 managers ready", "at least one")


def test_ready_none_answering_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    closed = [f"ws://127.0.0.1:{free_port()}/ws" for _ in range(2)]
    outcome = cli(capsys, "ready", *url_args(closed), "--any")
    assert outcome.code == 2
    assert [line.split(" (")[0] for line in outcome.out.splitlines()] == [
        f"unreachable: {url}" for url in closed
    ]
    assert_one_line_error(outcome.err, "0 of 2 managers ready")


def test_a_single_url_keeps_its_output(
    replicas: ReferenceCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """One manager: the single-manager document and lines, whatever --any says."""
    url = replicas.urls[0]
    outcome = cli(capsys, "ready", "--json", "--any", "--url", url)
    assert outcome.code == 0
    assert set(outcome.json()) == {"url", "ready", "status_code", "process_up", "detail", "body"}
    assert cli(capsys, "ready", "--url", url).out == f"ready: {url} (GET /ready answered 200)\n"


# -- where the URLs come from -------------------------------------------------------------------


def _urls_of(outcome_json: dict[str, object]) -> list[object]:
    managers = outcome_json["managers"]
    assert isinstance(managers, list)
    return [m["url"] for m in managers]


def test_url_repeated_comma_separated_and_on_both_sides_of_the_command(
    replicas: ReferenceCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = replicas.urls
    for args in (
        ["ready", "--url", a, "--url", b, "--url", c],
        ["ready", "--url", f"{a},{b}", "--url", c],
        ["--url", a, "ready", "--url", f" {b} ,{c},"],  # before and after the command add up
        ["--url", a, "--url", b, "ready", "--url", c],
    ):
        outcome = cli(capsys, "--json", *args)
        assert outcome.code == 0, (args, outcome.err)
        assert _urls_of(outcome.json()) == [a, b, c], args


def test_anytcm_url_comma_list_and_url_beats_it(
    replicas: ReferenceCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, c = replicas.urls
    monkeypatch.setenv("ANYTCM_URL", f"{a}, {b},{c}")
    listed = cli(capsys, "ready", "--json")
    assert listed.code == 0, listed.err
    assert _urls_of(listed.json()) == [a, b, c]
    # --url replaces the variable (it does not add to it): one manager, the one-manager output.
    given = cli(capsys, "ready", "--json", "--url", b)
    assert given.json()["url"] == b


def test_bad_urls_are_usage_errors_naming_the_bad_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = "ws://127.0.0.1:8000/ws"
    for value, fragment in (
        (f"{good},http://127.0.0.1:1/ws", "'http://127.0.0.1:1/ws'"),
        ("nope", "'nope'"),
        (",", "no URL in ','"),
    ):
        outcome = cli(capsys, "ready", "--url", good, "--url", value)
        assert outcome.code == 2
        assert "Traceback" not in outcome.err
        assert "argument --url" in outcome.err
        assert fragment in outcome.err, outcome.err

    twice = cli(capsys, "ready", "--url", good, "--url", f"ws://127.0.0.1:1/ws,{good}")
    assert twice.code == 2
    assert_one_line_error(twice.err, "--url:", good, "given twice")

    monkeypatch.setenv("ANYTCM_URL", f"{good},127.0.0.1:8001")
    from_env = cli(capsys, "ready")
    assert from_env.code == 2
    assert_one_line_error(from_env.err, "$ANYTCM_URL", "not a WebSocket URL", "'127.0.0.1:8001'")
    monkeypatch.setenv("ANYTCM_URL", f"{good},{good}")
    duplicated = cli(capsys, "ready")
    assert duplicated.code == 2
    assert_one_line_error(duplicated.err, "$ANYTCM_URL", "given twice")


def test_commands_stop_at_once_when_no_manager_answers(capsys: pytest.CaptureFixture[str]) -> None:
    closed = [f"ws://127.0.0.1:{free_port()}/ws" for _ in range(2)]
    outcome = cli(capsys, "queue-stats", *url_args(closed))
    assert outcome.code == 2
    assert_one_line_error(
        outcome.err, "cannot reach any of 2 managers", *closed, "ConnectionRefused", "--replicas"
    )


def test_queue_stats_over_several_managers_one_of_them_stopped(
    replicas: ReferenceCluster, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command over several managers goes ahead while one is down (the client routes
    around it); in load mode the calls are spread over those that answer."""
    urls = replicas.urls
    replicas[2].kill()
    try:
        once = cli(capsys, "queue-stats", "--json", *url_args(urls), "--backend", backend)
        load = cli(
            capsys,
            *("queue-stats", "--json", *url_args(urls), "--backend", backend),
            *("--repeat", "40", "--concurrency", "4"),
        )
    finally:
        replicas[2].start()
    assert once.code == 0, once.err
    assert "total_users" in once.json()
    assert load.code == 0, load.err
    assert load.json()["failed"] == 0


# -- serve-dev --replicas ------------------------------------------------------------------------


def test_replica_arguments_pass_every_option_on() -> None:
    """What a replica is started with parses back to what serve-dev was given."""
    given = [
        *("serve-dev", "--replicas", "2", "--port", "0", "--host", "127.0.0.1"),
        *("--token=-starts-with-a-dash", "--fault", "latency.double=5"),
        *("--fault", "hang_fraction=0.5", "--no-shm", "--queue-limit", "inference=3"),
        *("--ping-interval", "0", "--capability", "zstd", "--log-level", "INFO"),
        *("--permessage-deflate", "--drain-seconds", "0.5", "--max-message-bytes", "1000"),
    ]
    args = build_parser().parse_args(given)
    passed = replica_arguments(args)
    assert not any(a.startswith(("--port", "--host", "--replicas")) for a in passed)
    replica = build_manager_parser(argparse.ArgumentParser()).parse_args(passed)
    expected = build_manager_parser(argparse.ArgumentParser()).parse_args(given[3:])
    for ignored in ("host", "port"):
        delattr(replica, ignored)
        delattr(expected, ignored)
    assert vars(replica) == vars(expected)
    # Nothing given: nothing passed (the replicas' own defaults are serve-dev's).
    assert replica_arguments(build_parser().parse_args(["serve-dev", "--replicas", "2"])) == []


def serve_dev(*args: str, new_session: bool = False) -> subprocess.Popen[str]:
    """`anytcm serve-dev ARGS` as a process, with SIGINT at its default: a test runner started
    in the background passes SIGINT on as ignored, and the command keeps an ignored signal
    ignored (as it should). The wrapper execs, so the process keeps its pid."""
    restore_and_exec = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'anytcm', 'serve-dev', *sys.argv[1:]])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", restore_and_exec, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def announced(process: subprocess.Popen[str], count: int) -> tuple[list[str], list[int]]:
    """The replicas' lines and the `export ANYTCM_URL=` line; their URLs and pids."""
    assert process.stdout is not None
    assert process.stderr is not None
    urls, pids = [], []
    for number in range(1, count + 1):
        line = process.stdout.readline().rstrip("\n")
        match = LISTENING.match(line)
        assert match is not None, (line, process.stderr.read() if process.poll() else "")
        assert (int(match["n"]), int(match["of"])) == (number, count)
        urls.append(match["url"])
        pids.append(int(match["pid"]))
    assert process.stdout.readline() == f"export ANYTCM_URL={','.join(urls)}\n"
    return urls, pids


def http_of(url: str) -> str:
    return url.replace("ws://", "http://").removesuffix("/ws")


def assert_gone(pid: int) -> None:
    """Exited and reaped (serve-dev waited for its replicas, so none is a zombie)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("whole_group", [False, True], ids=["process", "process-group"])
def test_serve_dev_replicas_serve_and_sigint_stops_them_all(whole_group: bool) -> None:
    process = serve_dev("--replicas", "2", "--port", "0", new_session=whole_group)
    try:
        urls, pids = announced(process, 2)
        assert len(set(urls)) == 2
        for url in urls:
            response = httpx.get(f"{http_of(url)}/ready", timeout=10)
            assert response.status_code == 200
        assert process.poll() is None
        if whole_group:  # a terminal's Ctrl-C: every replica gets SIGINT too
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
    finally:
        out, err = finish(process)
    assert process.returncode == 0, err
    assert out == ""
    assert "SIGINT: stopping 2 replica(s)" in err
    assert "Traceback" not in err
    for pid in pids:
        assert_gone(pid)


def test_serve_dev_replicas_sigterm_drains_them_all_and_a_lost_replica_is_reported() -> None:
    process = serve_dev("--replicas", "3", "--port", "0", "--drain-seconds", "0.5")
    try:
        urls, pids = announced(process, 3)
        os.kill(pids[1], signal.SIGKILL)  # dies on its own: reported, the others go on
        assert process.stderr is not None
        lost = process.stderr.readline()
        assert lost.startswith(f"anytcm: replica 2 ({urls[1]}) was killed (SIGKILL)")
        assert "the others keep serving" in lost
        for url in (urls[0], urls[2]):
            assert httpx.get(f"{http_of(url)}/ready", timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
    finally:
        _, err = finish(process)
    assert process.returncode == 0, err
    assert "SIGTERM: draining 2 replica(s)" in err
    for pid in pids:
        assert_gone(pid)


def test_serve_dev_replicas_exits_1_when_every_replica_is_gone() -> None:
    process = serve_dev("--replicas", "2", "--port", "0")
    try:
        urls, pids = announced(process, 2)
        for url in urls:  # the `exit` fault: the replica exits at once with that status
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{http_of(url)}/_admin/faults", params={"exit": "3"}, timeout=10)
    finally:
        out, err = finish(process)
    assert process.returncode == 1, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert all(" exited with status 3" in line for line in lines)
    assert "the others keep serving" not in lines[-1]
    for pid in pids:
        assert_gone(pid)


def test_serve_dev_replicas_options_reach_every_replica(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--token (and the other options) apply to each replica: each wants the token."""
    process = serve_dev("--replicas", "2", "--port", "0", "--token", "s3cret")
    try:
        urls, _ = announced(process, 2)
        for url in urls:
            accepted = cli(capsys, "queue-stats", "--json", "--url", url, "--token", "s3cret")
            assert accepted.code == 0, accepted.err
            refused = cli(capsys, "queue-stats", "--url", url, "--token", "wrong")
            assert refused.code == 2
            assert_one_line_error(refused.err, "AuthError")
        process.send_signal(signal.SIGINT)
    finally:
        finish(process)
    assert process.returncode == 0


def two_free_ports_in_a_row() -> int:
    """P such that P and P+1 are both free now (bound together, then released)."""
    for _ in range(50):
        first = free_port()
        with socket.socket() as one, socket.socket() as two:
            try:
                one.bind(("127.0.0.1", first))
                two.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
        return first
    raise AssertionError("no two free ports in a row")


def test_serve_dev_replicas_port_is_the_first_of_consecutive_ports() -> None:
    first = two_free_ports_in_a_row()
    process = serve_dev("--replicas", "2", "--port", str(first))
    try:
        urls, _ = announced(process, 2)
        process.send_signal(signal.SIGINT)
    finally:
        finish(process)
    assert urls == [f"ws://127.0.0.1:{first}/ws", f"ws://127.0.0.1:{first + 1}/ws"]
    assert process.returncode == 0


def test_serve_dev_replicas_usage_errors() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_anytcm("serve-dev", "--replicas", "2", "--port", str(port - 1))
        in_use_first = run_anytcm("serve-dev", "--replicas", "2", "--port", str(port))
    # One of the two ports is taken (which one depends on whether port-1 was free): exit 2,
    # one line saying why, and no replica left behind (the other one was stopped).
    for done in (in_use, in_use_first):
        assert done.returncode == 2, done.stderr
        assert_one_line_error(done.stderr, "a replica did not start", "cannot listen on")
        assert done.stdout == ""

    past_the_end = run_anytcm("serve-dev", "--replicas", "2", "--port", "65535")
    assert past_the_end.returncode == 2
    assert_one_line_error(past_the_end.stderr, "--port 65535", "65536", "--port 0")

    tls = run_anytcm("serve-dev", "--replicas", "2", "--certfile", "c.pem", "--keyfile", "k.pem")
    assert tls.returncode == 2
    assert_one_line_error(tls.stderr, "--replicas", "TLS")

    bad_fault = run_anytcm("serve-dev", "--replicas", "2", "--fault", "no_such_switch=1")
    assert bad_fault.returncode == 2
    assert_one_line_error(bad_fault.stderr, "--fault")

    zero = run_anytcm("serve-dev", "--replicas", "0")
    assert zero.returncode == 2
    assert "--replicas: must be at least 1" in zero.stderr
