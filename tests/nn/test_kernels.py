"""The fused MLF kernels against the naive reference: exact spikes, allclose gradients, fallbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import mlfsnn.kernels as kernels
from mlfsnn import MLF, mlf, mlf_reference
from mlfsnn.kernels import cpu

NEURON_CASES = [  # (threshold, width, decay)
    (0.6, 1.0, 0.25),
    (0.3, 0.5, 0.9),
    (-0.2, 0.3, 1.0),
    (1.0, 2.0, 0.0),
    (0.5, 0.25, 0.5),
]


@pytest.fixture(scope="module", autouse=True)
def _kernel_built() -> None:
    if kernels.fused_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no C compiler: the fused CPU kernel cannot be built here")


def _run(x: torch.Tensor, grad: torch.Tensor, fn, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.detach().clone().requires_grad_()
    out = fn(xg, **kw)
    out.backward(grad)
    return out.detach(), xg.grad


def _assert_matches(x: torch.Tensor, grad: torch.Tensor | None = None, **kw) -> None:
    grad = torch.randn_like(x) if grad is None else grad
    ref_out, ref_grad = _run(x, grad, mlf_reference, **kw)
    out, got_grad = _run(x, grad, mlf, backend="fused", **kw)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(got_grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("params", NEURON_CASES)
@pytest.mark.parametrize("detach_reset", [False, True])
def test_matches_reference(levels: int, params: tuple, detach_reset: bool) -> None:
    threshold, width, decay = params
    x = torch.randn(9, 3, 5, 7) * 1.5 + 0.5
    kw = dict(threshold=threshold, width=width, decay=decay, detach_reset=detach_reset)
    _assert_matches(x, levels=levels, **kw)


@pytest.mark.parametrize("steps", [1, 2, 40])
def test_sequence_lengths(steps: int) -> None:
    _assert_matches(torch.randn(steps, 2, 33) * 2)


def test_many_levels_long_sequence() -> None:
    # K * T large enough that the backward tile shrinks to its minimum width.
    _assert_matches(torch.randn(300, 70) * 3, levels=7, width=0.5)


def test_multi_threaded_tiles_with_tail() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _assert_matches(torch.randn(3, 2 * 65536 + 37) * 1.5)
    finally:
        torch.set_num_threads(threads)


def test_non_contiguous_input_and_grad() -> None:
    x = (torch.randn(6, 8, 10) * 1.5).transpose(1, 2)[:, ::2]
    grad = torch.randn(8, 5, 6).permute(2, 1, 0)
    assert not x.is_contiguous() and not grad.is_contiguous() and grad.shape == x.shape
    _assert_matches(x, grad=grad)


def test_expanded_grad() -> None:
    x = torch.randn(5, 4, 6) * 1.5
    _assert_matches(x, grad=torch.ones(()).expand_as(x))  # what .sum().backward() hands down


def test_non_finite_inputs() -> None:
    # inf fires and then poisons the level with NaN ((decay * inf) * 0): same as the reference.
    x = torch.tensor([0.5, float("inf"), float("nan"), -float("inf"), 3.0]).repeat(4, 1)
    x[1, 0] = float("inf")
    assert torch.equal(mlf(x, backend="fused"), mlf_reference(x))


def test_no_grad_and_requires_grad_false_save_nothing() -> None:
    x = torch.randn(5, 3, 4)
    assert mlf(x, backend="fused").grad_fn is None
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        assert mlf(xg, backend="fused").grad_fn is None
    assert torch.equal(mlf(x, backend="fused"), mlf_reference(x))


def test_saves_only_the_input() -> None:
    out = mlf(torch.randn(5, 3, 4).requires_grad_(), backend="fused")
    node, seen = out.grad_fn, []
    while node is not None and "mlfsnn_mlf_forward" not in type(node).__name__:
        seen.append(type(node).__name__)
        node = node.next_functions[0][0]
    assert node is not None, seen
    assert [t.dtype for t in node.saved_tensors] == [torch.float32]


def test_bf16_input_fp32_potentials() -> None:
    x = (torch.randn(8, 4, 9) * 1.5).to(torch.bfloat16)
    xg = x.clone().requires_grad_()
    out = mlf(xg, backend="fused")
    assert out.dtype == torch.bfloat16
    ref = mlf_reference(x.float().requires_grad_())
    assert torch.equal(out.float(), ref)
    grad = torch.randn(x.shape)
    out.backward(grad.to(torch.bfloat16))
    assert xg.grad.dtype == torch.bfloat16
    ref_x = x.float().requires_grad_()
    mlf_reference(ref_x).backward(grad.to(torch.bfloat16).float())
    torch.testing.assert_close(xg.grad.float(), ref_x.grad, atol=2e-2, rtol=2e-2)


def test_under_autocast() -> None:
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    neuron = MLF()
    x = torch.randn(3 * 2, 2, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = neuron(conv(x).unflatten(0, (3, 2)))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert conv.weight.grad is not None


def test_module_uses_fused_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = kernels.fused_mlf
    monkeypatch.setattr(kernels, "fused_mlf", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(4, 2, 3)
    assert torch.equal(MLF()(x), mlf_reference(x))
    assert calls


def test_empty_input() -> None:
    x = torch.randn(0, 3, requires_grad=True)
    assert mlf(x, backend="fused").shape == (0, 3)


def test_fallback_warns_once_and_is_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "fused_unavailable_reason", lambda device: "forced off by a test")
    monkeypatch.setattr(kernels, "_WARNED", set())
    x = torch.randn(6, 3, 5) * 1.5
    with pytest.warns(RuntimeWarning, match="forced off by a test"):
        out, grad = _run(x, torch.ones_like(x), mlf)
    ref_out, ref_grad = _run(x, torch.ones_like(x), mlf_reference)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlf(x)  # warned once only
    with pytest.raises(RuntimeError, match="unavailable"):
        mlf(x, backend="fused")


def test_build_failure_raises_kernel_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MLFSNN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    cpu.reset_cpu_kernel()
    try:
        with pytest.raises(cpu.KernelUnavailable, match="could not build"):
            cpu.load_cpu_kernel()
        assert kernels.fused_unavailable_reason(torch.device("cpu")) is not None
    finally:
        cpu.reset_cpu_kernel()


def test_failure_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(cpu, "_find_compiler", lambda: calls.append(1))
    cpu.reset_cpu_kernel()
    try:
        with pytest.warns(RuntimeWarning):
            monkeypatch.setattr(kernels, "_WARNED", set())
            for _ in range(3):
                mlf(torch.randn(3, 4))
        assert calls == [1]  # one failed look for a compiler, not one per call
    finally:
        cpu.reset_cpu_kernel()


def test_fresh_cache_builds(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MLFSNN_KERNEL_CACHE", str(tmp_path))
    cpu.reset_cpu_kernel()
    try:
        cpu.load_cpu_kernel()
        assert list(tmp_path.glob("mlf_kernel_*.so"))
        assert "-ffp-contract=off" in cpu.cpu_kernel_info()["flags"]
        _assert_matches(torch.randn(5, 40))
    finally:
        cpu.reset_cpu_kernel()


def test_invalid_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        mlf(torch.randn(2, 2), backend="fast")


TRITON_CHECK = """
    import os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from mlfsnn.kernels.triton_mlf import mlf_backward_cuda, mlf_forward_cuda
    from mlfsnn.nn.neurons import level_thresholds, mlf_reference
    torch.manual_seed(0)
    worst = 0.0
    cases = [(1, 0.6, 1.0, 0.25, False, 5), (3, 0.6, 1.0, 0.25, False, 6), (4, -0.3, 0.5, 0.9, True, 4),
             (3, 0.2, 0.3, 0.5, False, 1)]
    for levels, th, width, decay, detach, steps in cases:
        x, g = torch.randn(steps, 300) * 1.5, torch.randn(steps, 300)
        xr = x.clone().requires_grad_()
        ref = mlf_reference(xr, levels, th, width, decay, detach)
        ref.backward(g)
        ths = level_thresholds(levels, th, width)
        assert torch.equal(mlf_forward_cuda(x, ths, decay), ref)
        worst = max(worst, (mlf_backward_cuda(x, g, ths, width, decay, detach) - xr.grad).abs().max().item())
    print(worst)
"""


def test_triton_kernel_logic_in_interpreter() -> None:
    """The CUDA kernel's logic, run by Triton's CPU interpreter (no GPU needed)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRITON_CHECK)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5


def test_bench_quick(tmp_path) -> None:
    from mlfsnn.cli.bench import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["neuron"] and data["train"] and "memory" in data
    assert {r["variant"] for r in data["train"]} == {"mlf", "mlf_unfused", "relu", "vectorized", "reference"}
    assert "| dvs_gesture |" in (tmp_path / "bench.md").read_text()
    assert data["machine"]["torch"] == torch.__version__
