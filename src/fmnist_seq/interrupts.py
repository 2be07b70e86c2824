"""How every entry point stops on SIGINT or SIGTERM: the stage scripts (run_stage), fmnist-tune and its trial
processes, and the training launcher.

A stop raises Interrupted (a KeyboardInterrupt, so no `except Exception` on the way swallows it) once, in the
main thread; the entry point then cleans up and exits with its code. A second signal during that clean-up is
noted, not raised: it would cut the clean-up short. A stop raised inside a destructor cannot leave it (Python
prints it and goes on), so it is delivered again a moment later, until it lands. A SIGINT that the process
inherited ignored (nohup, a shell's background job) stays ignored, as in every program started that way. A
process started inside held() gets its stops only once it has called install(): a Ctrl-C that reaches it while it
still imports torch would otherwise end it with Python's own traceback. A stopped entry point exits with
128 + the signal's number (exit_code), as a shell reports a command that the signal ended: 130 for Ctrl-C, 143
for SIGTERM.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from contextlib import contextmanager
from multiprocessing import resource_tracker
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from fmnist_seq.errors import Interrupted

# The signals that stop an entry point.
_STOPS = {signal.SIGINT, signal.SIGTERM}
# What a library that installs its own handlers may take over while it runs (torch elastic takes all four).
_HANDLED_ELSEWHERE = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class _Stop:
    """This process's stop, shared by the handler, the unraisable hook and the entry point."""

    signum: int | None = None  # the first stop signal received
    lost: bool = False  # its Interrupted died in a destructor: the next delivery raises it again
    deferred: bool = False  # inside deferred(): noted, not raised
    again: bool = False  # another stop signal came after the first (a second Ctrl-C): a waiting clean-up may cut short
    # Exceptions that other libraries' handlers raise for a signal (type, how to read its signal number)
    foreign: list[tuple[type[BaseException], Callable[[Any], int]]] = field(default_factory=list)


_stop = _Stop()


def install() -> None:
    """Make SIGTERM, and SIGINT unless it was inherited ignored, raise Interrupted; first thing in a main(). A
    stop that was held back while this process started (held()) is raised here, so call it inside the `try` that
    turns Interrupted into the exit code."""
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)
    sys.unraisablehook = _unraisable
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)


@contextmanager
def held() -> Iterator[None]:
    """Start processes in this block: stop signals wait, blocked, in this thread until the block ends and in each
    process started here until it calls install(); none is lost. (A blocked signal stays pending, and a child
    inherits the signal mask through fork and exec: CPython protects its own resource tracker the same way.)"""
    # multiprocessing starts that tracker with a process's first spawn and then unblocks SIGINT and SIGTERM
    # outright, which would end the hold; so it starts first.
    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def requested() -> bool:
    """Whether a stop signal has reached this process (raised or not)."""
    return _stop.signum is not None


def interrupted(signum: int | None = None) -> Interrupted:
    """The Interrupted to raise for this process's stop; `signum` records one that another library's handler
    received (torch elastic's launcher), so that the rest of the process treats it as ours."""
    if _stop.signum is None:
        _stop.signum = signum if signum is not None else signal.SIGINT
    return Interrupted(signal.Signals(_stop.signum).name)


def signal_number(exc: KeyboardInterrupt) -> int:
    """The signal behind a stop: Interrupted names it; Python's own KeyboardInterrupt is SIGINT."""
    return signal.Signals[exc.signal_name].value if isinstance(exc, Interrupted) else signal.SIGINT.value


def stopped_again() -> bool:
    """Whether another stop signal came after the first one: the user insists (a second Ctrl-C)."""
    return _stop.again


def exit_code(exc: KeyboardInterrupt | None = None) -> int:
    """The exit code of an entry point that a stop ended: 128 + the signal's number (130 for SIGINT, 143 for
    SIGTERM). The signal is the one `exc` names, else this process's stop, else SIGINT."""
    if exc is not None:
        return 128 + signal_number(exc)
    return 128 + int(_stop.signum if _stop.signum is not None else signal.SIGINT)


def stop_of_exit_code(code: int | None) -> int | None:
    """The stop signal that a child entry point's exit code reports (exit_code's inverse), or None."""
    if code is not None and code > 128 and code - 128 in _STOPS:
        return code - 128
    return None


@contextmanager
def deferred() -> Iterator[None]:
    """A stop during this block (a report being written) is noted, not raised; requested() says so after."""
    before, _stop.deferred = _stop.deferred, True
    try:
        yield
    finally:
        _stop.deferred = before


@contextmanager
def taken() -> Iterator[None]:
    """Inside deferred(), a block that a stop may end after all: one noted before it is raised as it starts, and
    one during it is raised as usual. For work that stops cleanly inside bookkeeping that must not be cut (an
    Optuna trial's training, inside Optuna's creating and closing of the trial)."""
    before, _stop.deferred = _stop.deferred, False
    try:
        if _stop.signum is not None:
            _stop.lost = False
            raise Interrupted(signal.Signals(_stop.signum).name)
        yield
    finally:
        _stop.deferred = before


@contextmanager
def handled_elsewhere(stop: type[BaseException], signum_of: Callable[[Any], int]) -> Iterator[None]:
    """For a library that installs its own handlers while this block runs, raising `stop`: a `stop` that dies
    in a destructor is delivered again like ours, and our handlers are back when the block ends."""
    saved = {signum: signal.getsignal(signum) for signum in _HANDLED_ELSEWHERE}
    _stop.foreign.append((stop, signum_of))
    try:
        yield
    finally:
        _stop.foreign.pop()
        for signum, handler in saved.items():
            if handler is not None:  # None: a handler not installed from Python, nothing to put back
                signal.signal(signum, handler)


def _on_signal(signum: int, _frame: object) -> None:
    if _stop.signum is not None and not _stop.lost:
        _stop.again = True  # a second signal: the first one's clean-up is under way; who waits on it may cut it short
        return
    if _stop.signum is None:
        _stop.signum = signum
    if _stop.deferred:
        return
    _stop.lost = False
    raise Interrupted(signal.Signals(_stop.signum).name)


def _unraisable(info: Any) -> None:
    signum = _stop_signal(info.exc_value)
    if signum is None:
        sys.__unraisablehook__(info)
        return
    if isinstance(info.exc_value, KeyboardInterrupt):
        _stop.lost = True
    # From another thread a moment later: a handler run from here would raise inside this hook, and be lost too.
    again = threading.Timer(0.01, _thread.interrupt_main, (signum,))
    again.daemon = True
    again.start()


def _stop_signal(exc: BaseException | None) -> int | None:
    if isinstance(exc, KeyboardInterrupt):
        return signal_number(exc)
    for stop, signum_of in _stop.foreign:
        if isinstance(exc, stop):
            return int(signum_of(exc))
    return None
