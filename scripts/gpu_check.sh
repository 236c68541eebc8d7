#!/usr/bin/env bash
# One-call check of a CUDA machine (one GPU, <= 8 minutes): fused-kernel parity against the reference,
# snn-bench's neuron and training-step benchmarks at the paper's batch sizes (eager and torch.compile),
# peak GPU memory, projected epoch times of the three recipes. See docs/performance.md, "GPU check".
#
#   scripts/gpu_check.sh OUT_DIR [option ...]
#   scripts/gpu_check.sh gpu_check_out                 # writes gpu_check.json, gpu_check.md, logs/
#   scripts/gpu_check.sh smoke_out --cpu-smoke         # every section on CPU at tiny sizes
#
# Options go to `python -m mlfsnn.bench.gpu_check` (--budget-s, --sections, --fullgraph, --autocast).
# Without a CUDA device (and without --cpu-smoke) it prints one line and exits 0. Needs torch and triton;
# without an installed mlfsnn it runs the checkout's src/ with python3.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    [[ $# -lt 1 ]] && exit 2 || exit 0
fi
out="$1"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The installed package's python (as reproduce.sh finds it); else the checkout's src/ on python3's path.
if python="$(source "$here/scripts/_find_bin.sh" 2>/dev/null && echo "$bin/python")" && [[ -x "$python" ]]; then
    :
else
    python="$(command -v python3)"
    export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" -m mlfsnn.bench.gpu_check --out "$out" "$@"
