"""Console scripts: each module parses argv, calls the runner or report, and maps errors to exit codes.

Exit codes: 0 success (a run stopped by SIGTERM/SIGUSR1 too, with its checkpoint: a requeue
continues it), 2 a user error (one line on stderr), 3 a run stopped by a non-finite loss, 4 a lost
torchrun peer, 130 Ctrl-C, 128 + the signal for a sweep stopped half-way.

Every module here imports torch only inside the functions that need it: ``--help`` answers at once.
"""

import os as _os

# A shared CPU (a laptop, a cluster node running several jobs): OpenMP threads that spin while they
# wait fight the other processes for the cores. Passive waiting costs nothing on a quiet machine and
# keeps a step beside one busy process within 1.6x of the quiet step (docs/performance.md, "A shared
# CPU"). Set before torch loads OpenMP, i.e. before any console script imports torch; a user's own
# OMP_WAIT_POLICY wins, and MLFSNN_NO_THREAD_DEFAULTS=1 leaves the environment alone.
if not _os.environ.get("MLFSNN_NO_THREAD_DEFAULTS"):
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
