#!/usr/bin/env bash
# The paper's claims at laptop scale, on real data (scikit-learn's digits), in one command:
#   1. plain spiking ResNets with LIF neurons degrade with depth, MLF + DS-ResNet does not;
#   2. MLF (K > 1) beats LIF (K = 1);   3. MLF and the DS block reduce dormant units.
#
#   scripts/laptop_reproduction.sh [OUT]          # default OUT: multirun/laptop/<date>_<time>
#   REPORT_ONLY=1 scripts/laptop_reproduction.sh OUT   # redo the two reports of finished sweeps
#   PUBLISH=docs/laptop scripts/laptop_reproduction.sh  # also copy reports and figures there
#
# Runs `snn-train -m +experiment=depth_digits` (24 runs) and `+experiment=ablation_levels_digits`
# (16 runs) side by side (half the cores each; logs in OUT/depth.log, OUT/levels.log) into OUT/depth
# and OUT/levels, then `snn-report` on each. Model selection uses the
# validation split (test accuracy at the best validation epoch); the paper's "best test" is reported
# beside it. Extra arguments after OUT are passed to both sweeps (e.g. trainer.seed=1,2,3).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_find_bin.sh"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi
out="${1:-multirun/laptop/$(date +%Y-%m-%d_%H-%M-%S)}"
shift || true
start=$(date +%s)
if [[ -z "${REPORT_ONLY:-}" ]]; then
    # Both sweeps at once, each on half the cores: small nets gain little from a second thread, and
    # one thread per process never spin-waits for a core the other process holds.
    threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
    mkdir -p "$out"
    OMP_NUM_THREADS=$threads "$bin/snn-train" -m +experiment=depth_digits "hydra.sweep.dir=$out/depth" "$@" \
        > "$out/depth.log" 2>&1 &
    depth_pid=$!
    OMP_NUM_THREADS=$threads "$bin/snn-train" -m +experiment=ablation_levels_digits \
        "hydra.sweep.dir=$out/levels" "$@" > "$out/levels.log" 2>&1 || { kill $depth_pid; exit 1; }
    wait $depth_pid || { echo "error: the depth sweep failed; see $out/depth.log" >&2; exit 1; }
fi
trained=$(date +%s)
"$bin/snn-report" "$out/depth" --out "$out/depth/report"
"$bin/snn-report" "$out/levels" --out "$out/levels/report"
end=$(date +%s)
{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "started: $(date -d @"$start" '+%Y-%m-%d %H:%M:%S %Z')"
    echo "training: $((trained - start)) s; reports: $((end - trained)) s; total: $((end - start)) s"
} | tee "$out/wall_time.txt" >&2
if [[ -n "${PUBLISH:-}" ]]; then
    for part in depth levels; do
        mkdir -p "$PUBLISH/$part"
        cp "$out/$part/report/"*.md "$out/$part/report/"*.csv "$out/$part/report/"*.png "$PUBLISH/$part/"
    done
    cp "$out/wall_time.txt" "$PUBLISH/"
    echo "published to $PUBLISH" >&2
fi
