# Sourced by the drivers in scripts/: sets $bin, the folder holding mlfsnn's console scripts
# (BIN=..., else the checkout's .venv, else the PATH), or exits 2 in one line.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${BIN:-$here/.venv/bin}"
[[ -x "$bin/snn-train" ]] || bin="$(dirname "$(command -v snn-train || echo /nonexistent/x)")"
if [[ ! -x "$bin/snn-train" ]]; then
    echo "error: snn-train not found (run 'make install' or set BIN=<folder with snn-train>)" >&2
    exit 2
fi
