"""snn-eval: evaluate a checkpoint on its test set.

    snn-eval checkpoint=outputs/.../checkpoints/best.pt
    snn-eval checkpoint=RUN_DIR time_steps=8 trainer.device=cpu out=eval.json

The model is rebuilt from the config stored in the checkpoint; ``key=value`` overrides apply to
that config (e.g. another T, data root or batch size). Results go to stdout and ``eval.json``
(beside the run directory's summary by default, or ``out=PATH``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..errors import ConfigError
from ._common import user_errors_exit

USAGE = "usage: snn-eval checkpoint=<file or run dir> [key=value ...] [out=<eval.json path>]"


def parse(argv: list[str]) -> tuple[Path, Path | None, list[str]]:
    """``(checkpoint, out, overrides)`` from ``key=value`` arguments; ``--help`` prints and exits 0."""
    from ..runner.evaluate import resolve_checkpoint

    ckpt, out, overrides = None, None, []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(USAGE + "\n\n" + (__doc__ or ""))
            raise SystemExit(0)
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r} is invalid: expected key=value; {USAGE}")
        if key == "checkpoint":
            ckpt = Path(value).expanduser()
        elif key == "out":
            out = Path(value).expanduser()
        else:
            overrides.append(arg)
    if ckpt is None:
        raise ConfigError(f"checkpoint is required; {USAGE}")
    return resolve_checkpoint(ckpt), out, overrides


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``snn-eval``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ..runner.evaluate import run_eval, write_result

    def run() -> dict:
        ckpt, out, overrides = parse(sys.argv[1:] if argv is None else argv)
        return run_eval(ckpt, overrides, out, write=False)

    result = user_errors_exit(run)
    keys = ("checkpoint", "epoch", "time_steps", "test_samples", "test_loss", "test_acc")
    # Printed before it is written: a failing write never loses the computed result.
    print(json.dumps({k: result[k] for k in keys}, indent=2), flush=True)
    out = user_errors_exit(lambda: write_result(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
