#!/usr/bin/env bash
# The paper's claims at laptop scale, in one command (docs/reproduce.md, "Laptop-scale results"):
#   1. plain spiking ResNets with LIF neurons degrade with depth, MLF + DS-ResNet does not;
#   2. MLF (K > 1) beats LIF (K = 1);   3. MLF and the DS block reduce dormant units.
#
#   scripts/laptop_reproduction.sh [OUT]          # default OUT: multirun/laptop/<date>_<time>
#   REPORT_ONLY=1 scripts/laptop_reproduction.sh OUT   # redo the reports of finished sweeps
#   PUBLISH=docs/laptop scripts/laptop_reproduction.sh  # also copy reports and figures there
#
# Three sweeps: `+experiment=depth_digits` (32 runs, real digits) on one half of the cores, and
# `+experiment=ablation_levels_digits` (16 runs, real digits) then `ablation_levels_digits_dvs`
# (8 runs, emulated event digits) on the other half; logs in OUT/<part>.log, runs in OUT/depth,
# OUT/levels, OUT/levels_dvs, then `snn-report` on each. Model selection uses the validation split
# (test accuracy at the best validation epoch); the paper's "best test" is reported beside it. Then
# snn-eval on every run's best checkpoint (the four dormant readings) and snn-report on each sweep.
# Extra arguments after OUT are passed to every sweep (e.g. trainer.seed=1,2,3). A killed run of this
# script continues where it stopped when rerun with the same OUT (trainer.resume=auto).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_find_bin.sh"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi
out="${1:-multirun/laptop/$(date +%Y-%m-%d_%H-%M-%S)}"
shift || true
parts=(depth levels levels_dvs)
start=$(date +%s)
if [[ -z "${REPORT_ONLY:-}" ]]; then
    # Two processes, each on half the cores: small nets gain little from a second thread, and one
    # thread per process never spin-waits for a core the other process holds.
    threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
    mkdir -p "$out"
    sweep() {  # sweep PART PRESET ARGS...: one Hydra multirun into OUT/PART, its log in OUT/PART.log
        local part=$1 preset=$2
        shift 2
        OMP_NUM_THREADS=$threads "$bin/snn-train" -m "+experiment=$preset" "hydra.sweep.dir=$out/$part" \
            trainer.resume=auto "$@" > "$out/$part.log" 2>&1 \
            || { echo "error: the $part sweep failed; see $out/$part.log" >&2; return 1; }
    }
    sweep depth depth_digits "$@" &
    depth_pid=$!
    { sweep levels ablation_levels_digits "$@" && sweep levels_dvs ablation_levels_digits_dvs "$@"; } \
        || { kill $depth_pid 2>/dev/null; exit 1; }
    wait $depth_pid || exit 1
fi
trained=$(date +%s)
# Dormant units in four readings (docs/method.md §8): snn-eval on each run's best checkpoint writes
# them to its eval.json, two runs at a time; snn-report then tabulates and draws them.
for part in "${parts[@]}"; do
    find "$out/$part" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*' -print0 | sort -z \
        | OMP_NUM_THREADS=1 xargs -0 -P "$(nproc)" -I{} "$bin/snn-eval" checkpoint={} >> "$out/eval.log" 2>&1 \
        || { echo "error: snn-eval failed on a run of $out/$part; see $out/eval.log" >&2; exit 1; }
done
evaluated=$(date +%s)
for part in "${parts[@]}"; do
    "$bin/snn-report" "$out/$part" --out "$out/$part/report"
done
end=$(date +%s)
{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "started: $(date -d @"$start" '+%Y-%m-%d %H:%M:%S %Z')"
    echo "training: $((trained - start)) s; snn-eval: $((evaluated - trained)) s; reports: $((end - evaluated)) s;" \
        "total: $((end - start)) s"
} | tee "$out/wall_time.txt" >&2
if [[ -n "${PUBLISH:-}" ]]; then
    for part in "${parts[@]}"; do
        mkdir -p "$PUBLISH/$part"
        cp "$out/$part/report/"*.md "$out/$part/report/"*.csv "$out/$part/report/"*.png "$PUBLISH/$part/"
    done
    cp "$out/wall_time.txt" "$PUBLISH/"
    echo "published to $PUBLISH" >&2
fi
