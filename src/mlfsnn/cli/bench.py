"""snn-bench: MLF neuron and training-step benchmarks; writes ``bench.json`` and ``bench.md``.

    snn-bench                 # the full CPU benchmark (about 7 minutes on 2 cores)
    snn-bench --quick         # tiny sizes, seconds (a smoke test of the benchmark itself)
    snn-bench --compile       # also torch.compile'd MLF and ReLU nets (compile time reported apart)
    snn-bench --contention --skip-neuron --skip-train   # the digits step beside a busy process
    snn-bench --framing --skip-neuron --skip-train      # event framing: events/s, ours vs tonic's ToFrame

See :mod:`mlfsnn.bench` for what is measured and how.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import plain_text, user_errors_exit

NETS = ("dvs_gesture", "cifar10", "cifar10_dvs")
VARIANTS = ("mlf", "mlf_unfused", "relu", "vectorized", "reference")
# As mlfsnn.bench.COMPILED_VARIANTS (not imported here: --help stays light).
COMPILED = ("mlf_compiled", "relu_compiled")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snn-bench", description=plain_text(__doc__).split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat, memory of the first net only")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for bench.json and bench.md")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 1)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + COMPILED)
    p.add_argument(
        "--compile",
        action="store_true",
        help="add mlf_compiled and relu_compiled: torch.compile'd nets (inductor on CPU: ~1 min per net)",
    )
    p.add_argument(
        "--fullgraph", action="store_true", help="torch.compile(fullgraph=True): fail on a graph break"
    )
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--nets", nargs="+", default=None, choices=NETS, help="subset of the paper nets")
    p.add_argument("--skip-neuron", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument(
        "--contention",
        action="store_true",
        help="also the digits demo's step, quiet and beside one busy process, per wait policy and threads",
    )
    p.add_argument(
        "--framing",
        action="store_true",
        help="also event framing (DVS-Gesture-sized recordings, T=20): events/s, ours vs tonic's ToFrame",
    )
    return p


def _framer(framing: str, size: int, bin_us: int, time_steps: int) -> Any:
    """mlfsnn's frame building for the framing benchmark (which sits below the data layer)."""
    from ..data.events.framing import FrameSpec, frame_events

    spec = FrameSpec(time_steps=time_steps, framing=framing, bin_us=bin_us, size=size)
    return lambda events: frame_events(events, spec)


def run_bench(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` like the command line, run, write the reports and return the results."""
    args = _parser().parse_args(argv)  # --help answers here, before torch loads
    import torch

    from .. import bench

    if args.threads < 1 or (args.repeats is not None and args.repeats < 1):
        raise ConfigError(f"--threads={args.threads} / --repeats={args.repeats} are invalid: expected >= 1")
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device={name} is invalid: CUDA is not available here (use cpu)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device={name!r} is invalid: expected cpu, cuda or cuda:N") from None
    variants = list(dict.fromkeys(args.variants + (list(COMPILED) if args.compile else [])))
    opts = bench.CompileOptions(fullgraph=args.fullgraph, backend=args.compile_backend)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        result = bench.run(
            device,
            quick=args.quick,
            repeats=args.repeats,
            variants=variants,
            nets=args.nets,
            threads=args.threads,
            neuron=not args.skip_neuron,
            train=not args.skip_train,
            memory=not args.skip_memory,
            contention=args.contention,
            compile_opts=opts,
        )
        if args.framing:
            from ..bench.framing import framing_benchmark

            repeats = result["settings"]["repeats"]
            result["framing"] = framing_benchmark(_framer, repeats=repeats, quick=args.quick)
    finally:
        torch.set_num_threads(threads)  # called in-process (tests): leave the caller's setting alone
    print(bench.write(result, args.out))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``snn-bench``."""
    user_errors_exit(lambda: run_bench(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
