"""``python -m mlfsnn.train``: the same program as ``snn-train`` (torchrun launches it this way)."""

from .cli.train import main

if __name__ == "__main__":
    main()
