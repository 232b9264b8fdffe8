"""Spawning a child that receives Ctrl-C as a terminal would deliver it."""

import signal


def default_sigint() -> None:
    """``preexec_fn`` for a child that tests Ctrl-C: SIGINT back to its default.

    A child inherits an ignored SIGINT (a shell starts background jobs with
    SIGINT ignored: ``cmd &``, ``nohup``), and Python then leaves it ignored, so
    the child would never see the signal and the test would fail for a reason
    that is not deqbench's. A terminal's Ctrl-C reaches a foreground process
    with the default disposition, which is what these tests are about.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
