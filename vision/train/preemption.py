"""SIGTERM (the usual preemption notice) -> finish the current step, save, exit.

One process: a Python handler sets a flag that the loop reads between steps.
Several processes: they must stop at the same step (a save is collective), so
JAX's preemption sync manager decides. jax.distributed.initialize() installs
its SIGTERM notifier; a notice on any process makes every process reach the
same sync point, max(step over processes) + 1. Either way the signal only
takes effect between steps: the bound on the exit time is one step, one
checkpoint save, and the wait for a save already in flight.
"""
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once

  def reached(self, step: int) -> bool:
    """True when training must stop after `step`; call it after every step, on every process."""
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
