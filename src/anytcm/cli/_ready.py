"""`anytcm ready`: the managers' readiness probe, as an exit code.

Deployment scripts and health checks wait on this: 0 when `GET /ready` answers 200, 1 when the
manager answers but is not ready (503 during start-up or a drain), 2 when nothing answers.
It asks exactly what the client's own readiness gate asks before every connection
(`anytcm.readiness`), so "ready" here means the client would connect now.

With several managers (`--url` repeated) every one is asked at once and reported on a line of
its own (an entry of `managers` with `--json`). The verdict is "all ready" by default: a
deployment check wants to know that every replica can serve, since the client would route
around the others and hide a broken one. `--any` asks the client's question instead: can it
serve at all (at least one ready)? Either way the exit code is 2 only when no manager
answered, as for one manager: then nothing is there to talk to.
"""

from __future__ import annotations

from typing import Any

from ..readiness import ReadyState
from ._context import CliContext, unreachable_message
from ._errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, report
from ._output import print_json


def run_ready(context: CliContext, *, any_ready: bool = False) -> int:
    if len(context.urls) > 1:
        return _several(context, any_ready=any_ready)
    state: ReadyState = context.run(context.readiness)
    reachable = state.status_code is not None
    code = EXIT_OK if state.ready else EXIT_FAILURE if reachable else EXIT_USAGE
    if context.json:
        print_json(_as_json(context.url, state))
    elif state.ready:
        print(f"ready: {context.url} (GET /ready answered 200)")
    if not state.ready:
        if reachable:
            report(f"not ready: {context.url}: {state.detail}")
        else:
            report(unreachable_message(context.url, state))
    return code


def _as_json(url: str, state: ReadyState) -> dict[str, Any]:
    return {
        "url": url,
        "ready": state.ready,
        "status_code": state.status_code,
        "process_up": state.process_up,
        "detail": state.detail,
        "body": state.body,
    }


def _several(context: CliContext, *, any_ready: bool) -> int:
    states = context.run(context.readiness_of_all)
    ready = sum(state.ready for state in states)
    passed = ready >= 1 if any_ready else ready == len(states)
    if passed:
        code = EXIT_OK
    elif any(state.status_code is not None for state in states):
        code = EXIT_FAILURE
    else:
        code = EXIT_USAGE
    rule = "any" if any_ready else "all"
    if context.json:
        print_json(
            {
                "ready": passed,
                "rule": rule,
                "ready_count": ready,
                "managers": [_as_json(url, s) for url, s in zip(context.urls, states, strict=True)],
            }
        )
    else:
        # Every manager on stdout, the failures included: this is the report asked for, and a
        # reader compares the lines. The verdict, when negative, is the one line on stderr.
        for url, state in zip(context.urls, states, strict=True):
            print(_line(url, state), flush=True)
    if not passed:
        wanted = "at least one (--any)" if any_ready else "every one (--any: at least one)"
        report(f"{ready} of {len(states)} managers ready; exit 0 needs {wanted}")
    return code


def _line(url: str, state: ReadyState) -> str:
    if state.ready:
        return f"ready: {url} (GET /ready answered 200)"
    if state.status_code is not None:
        return f"not ready: {url}: {state.detail}"
    cause = state.detail.rsplit(" <- ", 1)[-1]  # the root cause, as unreachable_message says
    return f"unreachable: {url} ({cause})"
