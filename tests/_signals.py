"""Spawning a child that receives Ctrl-C as a terminal would deliver it."""

import sys

# Runs argv[1:] by exec with SIGINT at its default disposition; exec keeps the
# disposition, and Python then installs its KeyboardInterrupt handler.
_EXEC_WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def default_sigint(argv: list[str]) -> list[str]:
    """``argv`` of a child that tests Ctrl-C, run with SIGINT back to its default.

    A child inherits an ignored SIGINT (a shell starts background jobs with
    SIGINT ignored: ``cmd &``, ``nohup``), and Python then leaves it ignored, so
    the child would never see the signal and the test would fail for a reason
    that is not deqbench's. A terminal's Ctrl-C reaches a foreground process
    with the default disposition, which is what these tests are about.

    A wrapper process that resets the signal and execs ``argv``, not a
    ``preexec_fn``: that forces a fork of the test process, which pytest turns
    into an error once a multithreaded library (JAX, imported by the peer tests)
    is loaded ("os.fork() is incompatible with multithreaded code").
    """
    return [sys.executable, "-c", _EXEC_WITH_DEFAULT_SIGINT, *argv]
