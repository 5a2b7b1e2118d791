"""`anytcm ready`: the manager's readiness probe, as an exit code.

Deployment scripts and health checks wait on this: 0 when `GET /ready` answers 200, 1 when the
manager answers but is not ready (503 during start-up or a drain), 2 when nothing answers.
It asks exactly what the client's own readiness gate asks before every connection
(`anytcm.readiness`), so "ready" here means the client would connect now.
"""

from __future__ import annotations

from ..readiness import ReadyState
from ._context import CliContext, unreachable_message
from ._errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, report
from ._output import print_json


def run_ready(context: CliContext) -> int:
    state: ReadyState = context.run(context.readiness)
    reachable = state.status_code is not None
    code = EXIT_OK if state.ready else EXIT_FAILURE if reachable else EXIT_USAGE
    if context.json:
        print_json(
            {
                "url": context.url,
                "ready": state.ready,
                "status_code": state.status_code,
                "process_up": state.process_up,
                "detail": state.detail,
                "body": state.body,
            }
        )
    elif state.ready:
        print(f"ready: {context.url} (GET /ready answered 200)")
    if not state.ready:
        if reachable:
            report(f"not ready: {context.url}: {state.detail}")
        else:
            report(unreachable_message(context.url, state))
    return code
