#!/usr/bin/env bash
# Reproduce one of the paper's tables: run a recipe or sweep preset, then tabulate it with snn-report.
#
#   scripts/reproduce.sh PRESET [override ...]
#   scripts/reproduce.sh cifar10                              # Table: CIFAR10, one run (GPU: ~hours)
#   scripts/reproduce.sh ablation_levels_dvs_gesture          # K = 1/2/3 x DS/plain, 6 runs
#   scripts/reproduce.sh depth_cifar10 trainer.seed=1,2,3     # depth sweep, 3 seeds (63 runs)
#   scripts/reproduce.sh cifar10 hydra/launcher=slurm hydra.launcher.partition=gpu trainer.resume=auto
#
# PRESET is a file name in configs/experiment/ (without .yaml). Every run goes under
# multirun/<PRESET>/<date>_<time>/ (override with OUT=DIR); the report is written to <that>/report/.
# Re-running with the same OUT and trainer.resume=auto continues unfinished runs.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_find_bin.sh"
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    [[ $# -lt 1 ]] && exit 2 || exit 0
fi
preset="$1"
shift
presets="$("$bin/python" -c 'import importlib.resources as r; print(" ".join(sorted(p.name[:-5] for p in (r.files("mlfsnn.configs") / "experiment").iterdir() if p.name.endswith(".yaml"))))')"
if [[ " $presets " != *" $preset "* ]]; then
    echo "error: preset '$preset' is not in configs/experiment; allowed: $presets" >&2
    exit 2
fi
out="${OUT:-multirun/$preset/$(date +%Y-%m-%d_%H-%M-%S)}"
start=$(date +%s)
"$bin/snn-train" -m "+experiment=$preset" "hydra.sweep.dir=$out" "$@"
"$bin/snn-report" "$out" --out "$out/report"
echo "reproduce: $preset finished in $(( $(date +%s) - start )) s; report: $out/report/report.md" >&2
