"""Property-based: any value for any validated key passes or fails with a one-line ConfigError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from mlfsnn.errors import ConfigError
from mlfsnn.runner.config import validate
from runner_utils import compose_cfg

BASE = compose_cfg(["+experiment=digits"])
KEYS = [
    "time_steps",
    "neuron.levels",
    "neuron.threshold",
    "neuron.width",
    "neuron.decay",
    "neuron.detach_reset",
    "model.depth",
    "model.widths",
    "model.block",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "scheduler.name",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.max_steps",
    "trainer.device",
    "trainer.precision",
    "trainer.num_workers",
    "trainer.seed",
    "trainer.grad_clip",
    "trainer.resume",
    "trainer.pin_memory",
    "trainer.deterministic",
    "dataset.subset",
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 300), max_size=4),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_is_accepted_or_named(key: str, value: object) -> None:
    cfg = OmegaConf.create(OmegaConf.to_container(BASE, resolve=True))
    OmegaConf.update(cfg, key, value, force_add=True)
    try:
        validate(cfg)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message
        assert key in message or message.startswith("config error:")
