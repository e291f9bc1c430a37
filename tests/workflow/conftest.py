"""Shared by the workflow tests: a TERM or HUP (test.sh's trap, a cancelled CI job) ends the run
as Ctrl-C does, so that every fixture's servers and the functions they started are stopped on
the way out (they run in sessions of their own, which the signal does not reach)."""

import signal


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _interrupt)
signal.signal(signal.SIGHUP, _interrupt)
