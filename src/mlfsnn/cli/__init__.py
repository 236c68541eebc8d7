"""Console scripts: each module parses argv, calls the runner or report, and maps errors to exit codes.

Exit codes: 0 success, 2 a user error (one line on stderr), 3 a run stopped by a non-finite loss.
"""
