"""Stopping on SIGINT (Ctrl-C) and SIGTERM (how SLURM and Kubernetes end a job at its time limit or on preemption).

A stopped command prints one line saying what was kept and how to go on, and exits with the shell's status for the
signal (130 for SIGINT, 143 for SIGTERM), never 0: a scheduler must not read a stopped job as a finished one.

While a Lightning loop runs, SIGTERM is Lightning's to handle: it finishes the current batch and raises its
``SIGTERMException`` (a ``SystemExit`` without a status, which would exit 0). Outside a loop (building the
learner, reading data, between the runs of a suite) this module's handler raises :class:`Interrupted` at once.
What the user is told comes from whoever knows: the fit's :class:`~vlprompt.callbacks.InterruptionReport` (the
checkpoint to resume from) or the suite (the run that was stopped), through :func:`set_resume_hint`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator, Optional

#: The exit status of a process stopped by each signal, as a shell reports it (128 + the signal's number).
EXIT_STATUS = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class Interrupted(BaseException):
    """SIGTERM arrived outside a Lightning loop. A ``BaseException``, like ``KeyboardInterrupt``, so that no
    ``except Exception`` on the way up mistakes it for an error to recover from."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


#: The signal that stopped the current command (None while none has) and what to tell the user about going on.
_state: dict = {"signal": None, "hint": None, "active": False}


def note_signal(signal_name: str) -> None:
    _state["signal"] = signal_name


def set_resume_hint(hint: Optional[str]) -> None:
    """What the stop line says after "stopped by SIGNAL; " (how to go on); the last one set wins."""
    _state["hint"] = hint


def _on_sigterm(signum, frame) -> None:
    note_signal("SIGTERM")
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        # A Lightning trainer has wrapped this handler into its own: it stops at the end of the current batch.
        return
    raise Interrupted("SIGTERM")


def signal_of(error: BaseException) -> Optional[str]:
    """The signal behind ``error``, or None when it is not an interruption."""
    if isinstance(error, Interrupted):
        return error.signal_name
    if isinstance(error, KeyboardInterrupt):
        return "SIGINT"
    lightning = sys.modules.get("pytorch_lightning.utilities.exceptions")
    if lightning is not None and isinstance(error, lightning.SIGTERMException):
        return "SIGTERM"
    if isinstance(error, SystemExit) and _state["signal"]:  # Lightning turns Ctrl-C into sys.exit(1)
        return _state["signal"]
    return None


@contextlib.contextmanager
def stop_cleanly() -> Iterator[None]:
    """Run a command so that SIGINT and SIGTERM end it with one line and status 130 or 143 (inside another
    ``stop_cleanly``, the outer one reports)."""
    if _state["active"]:
        yield
        return
    _state.update(signal=None, hint=None, active=True)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        yield
    except BaseException as error:  # noqa: BLE001 - only interruptions are reported here, the rest re-raised
        name = signal_of(error)
        if name is None:
            raise
        hint = _state["hint"] or "nothing was finished; run the same command again"
        sys.stderr.write(f"vlprompt: stopped by {name}; {hint}\n")
        sys.stderr.flush()
        sys.exit(EXIT_STATUS[name])
    finally:
        _state["active"] = False
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
