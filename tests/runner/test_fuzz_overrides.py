"""Property: whatever a user types as overrides, snn-train answers with a run or one line, never a traceback.

The CLI checks overrides before Hydra (``check_overrides``), then Hydra composes, then the composed
config is validated. Here the three steps run in-process on generated override strings: any
exception other than a ``UserError`` from our checks would reach the user as a traceback.
"""

from __future__ import annotations

import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlfsnn.errors import UserError
from mlfsnn.runner.config import validate
from mlfsnn.runner.schema import check_overrides
from runner_utils import compose_cfg

KEYS = st.sampled_from(
    [
        "trainer.epochs",
        "trainer.epoch",
        "time_steps",
        "model.widths",
        "model.depth",
        "neuron.levels",
        "dataset",
        "experiment",
        "optimizer",
        "optimizer.lr",
        "trainer.resume",
        "scheduler.name",
        "logger.wandb.mode",
        "foo",
        "trainer",
        "model",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        ["3", "-1", "0.5", "null", "true", "[4,8,8]", "[4,8", "digits", "foo", "'a b'", "1,2", ""]
    ),
    st.text(alphabet="ab01,.[]{}=:+~' ", max_size=8),
)
PREFIX = st.sampled_from(["", "+", "++", "~"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=PREFIX, key=KEYS, value=VALUES)
def test_overrides_never_end_in_a_traceback(prefix: str, key: str, value: str) -> None:
    arg = f"{prefix}{key}={value}" if prefix != "~" else f"~{key}"
    try:
        check_overrides([arg])
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    try:
        cfg = compose_cfg(["+experiment=digits", arg] if "experiment" not in arg else [arg])
    except HydraException as exc:  # reaches the user as Hydra's multi-line report: a hole to close
        pytest.fail(f"{arg!r} passed the pre-check but Hydra refused it: {exc}")
    try:
        validate(cfg)
    except UserError as exc:
        assert "\n" not in str(exc)
