"""snn-eval: evaluate a checkpoint on its test set.

    snn-eval checkpoint=outputs/.../checkpoints/best.pt
    snn-eval checkpoint=RUN_DIR time_steps=8 trainer.device=cpu out=eval.json
    snn-eval checkpoint=RUN_DIR plots=true

The model is rebuilt from the config stored in the checkpoint; ``key=value`` overrides apply to
that config (e.g. another T, data root or batch size). Results go to stdout and ``eval.json``
beside the run directory's summary; ``out=NAME`` (a bare file name) also goes beside the run,
``out=FOLDER/NAME`` where it says. ``plots=true`` also draws, beside
eval.json, a spike raster of test sample 0 and the firing rate per time step of every MLF layer
(``<eval stem>_spike_raster.png``, ``<eval stem>_firing_rate_per_step.png``), listed under
``plots`` in eval.json.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..errors import ConfigError
from ._common import key_values, user_errors_exit

USAGE = (
    "usage: snn-eval checkpoint=<file or run dir> [key=value ...] [out=<eval.json path>] [plots=true|false]"
)


def parse(argv: list[str]) -> tuple[Path, Path | None, list[str], bool]:
    """``(checkpoint, out, overrides, plots)`` from ``key=value`` arguments; ``--help`` prints and exits 0."""
    mine, overrides = key_values(argv, ("checkpoint", "out", "plots"), USAGE, __doc__)
    out = Path(mine["out"]).expanduser() if "out" in mine else None
    plots = mine.get("plots", "false")
    if plots.lower() not in ("true", "false"):
        raise ConfigError(f"plots={plots!r} is invalid: expected true or false")
    plots, ckpt = plots.lower() == "true", Path(mine["checkpoint"]).expanduser()
    from ..runner.evaluate import resolve_checkpoint  # torch: only once --help is ruled out

    return resolve_checkpoint(ckpt), out, overrides, plots


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``snn-eval``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> dict:
        ckpt, out, overrides, plots = parse(sys.argv[1:] if argv is None else argv)
        from ..runner.evaluate import run_eval  # torch: once --help is ruled out

        return run_eval(ckpt, overrides, out, write=False, plots=plots)

    result = user_errors_exit(run)
    keys = ("checkpoint", "epoch", "time_steps", "test_samples", "test_loss", "test_acc", "energy_ratio")
    # Printed before it is written: a failing write never loses the computed result.
    print(json.dumps({k: result[k] for k in keys}, indent=2), flush=True)
    if "spikes" in result:
        result["plots"] = [str(p) for p in user_errors_exit(lambda: draw_spikes(result))]
        if result.get("tensorboard_run"):  # the run logs to TensorBoard: the plots as images there
            user_errors_exit(lambda: plots_to_tensorboard(result))
    from ..runner.evaluate import write_result

    out = user_errors_exit(lambda: write_result(result))
    for path in [*result.get("plots", []), out]:
        print(f"wrote {path}")
    return 0


def plots_to_tensorboard(result: dict) -> Path:
    """Add ``result["plots"]`` to the run's TensorBoard files as images ``<eval stem>/<plot>``
    (``eval/spike_raster``, ``eval/firing_rate_per_step``) at the checkpoint's epoch."""
    from ..runner.tensorboard import add_png_images

    stem = Path(result["eval_json"]).stem
    images = {f"{stem}/{Path(p).stem.removeprefix(stem + '_')}": Path(p) for p in result["plots"]}
    try:
        folder = add_png_images(Path(result["tensorboard_run"]), images, int(result.get("epoch") or 0))
    except OSError as exc:
        raise ConfigError(f"plots=true: cannot add the plots to TensorBoard: {exc.strerror or exc}") from None
    print(f"added {len(images)} image(s) to {folder}")
    return folder


def draw_spikes(result: dict) -> list[Path]:
    """Draw ``result["spikes"]`` (recorded by ``run_eval(plots=True)``) beside the result's eval.json."""
    from ..report.spikes import write_spike_plots  # matplotlib loads only when plots are asked for

    spikes, out = result.pop("spikes"), Path(result["eval_json"])
    try:
        return write_spike_plots(
            spikes["rasters"],
            spikes["rates"],
            spikes["levels"],
            out.parent,
            stem=out.stem,
            sample=spikes["sample"],
            samples=spikes["samples"],
        )
    except OSError as exc:
        raise ConfigError(f"plots=true: cannot write the plots beside {out}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
