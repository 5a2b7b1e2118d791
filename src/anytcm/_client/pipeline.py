"""`AsyncClient.pipeline`: models run one after another on a registered server, in one request."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import wire
from .._core.pool import Pool
from ..results import InferResult, ModelSpec, Target, shared_float_dtype
from .inference import request_inference
from .management import reply_shape
from .retrying import Retrier
from .staging import Inputs, Stager, input_values

Step = tuple[str, Inputs] | tuple[str, Inputs, str]
"""`(model, inputs)` or `(model, inputs, step_name)`."""


async def run_pipeline(
    steps: Sequence[Step],
    target: Target,
    output_dtypes: Mapping[str, Mapping[str, Any]] | None,
    seconds: float,
    deadline: float,
    *,
    pool: Pool,
    stager: Stager,
    retrier: Retrier,
    model_spec: Callable[[str, Target | None], ModelSpec | None],
) -> dict[str, InferResult]:
    """Send the steps as one pipeline request by `deadline` (the caller's `seconds`), retried
    like an inference; returns each step's result by its name (or model)."""
    wire_steps = []
    for step in steps:
        model, step_inputs = step[0], step[1]
        name = step[2] if len(step) > 2 else None
        wire_steps.append(
            wire.PipelineStep(
                model_name=model,
                inputs=stager.json_items(model, step_inputs, target, "pipelines"),
                name=name,
            )
        )
    payload = wire.InferencePayload(
        vm_ip=target.vm_ip, container_id=target.container_id, pipeline=wire_steps
    )
    raw = stager.encode_checked(payload, "pipeline")
    completed = await request_inference(
        pool,
        retrier,
        raw,
        deadline=deadline,
        seconds=seconds,
        what="pipeline",
        label="pipeline",
        manager=pool.affinity.route(target, transient=False),
    )
    results: dict[str, InferResult] = {}
    # A step's reply key is its name, else its model (as the manager keys them).
    by_key = {(s[2] if len(s) > 2 else None) or s[0]: (s[0], s[1]) for s in steps}
    for key, step_outputs in (completed.outputs or {}).items():
        model, step_inputs = by_key.get(key, (key, {}))
        with reply_shape("pipeline", completed.outputs):
            outputs = wire.decode_raw_dict(step_outputs)
        results[key] = InferResult(
            model,
            outputs,
            dict((output_dtypes or {}).get(key, {})),
            model_spec(model, target),
            shared_float_dtype(input_values(step_inputs)),
        )
    return results
