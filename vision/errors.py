"""The one exception type that the CLIs turn into a one-line message and exit 2."""
import difflib


class UserError(Exception):
  """A problem with the user's input (config, data, checkpoint) and how to fix it.

  `train.py` and `eval.py` print `error: <message>` and exit with status 2; the
  message must name the problem and the fix on one line.
  """


def close_matches(name, candidates, n=3):
  """A ' (did you mean: a, b?)' suffix, or '' when nothing is close."""
  matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
  return f" (did you mean: {', '.join(matches)}?)" if matches else ""


class WriteError(UserError):
  """A checkpoint could not be written (full disk, no permission); the message names the intact one."""


class TrainingError(Exception):
  """Training cannot go on (e.g. a non-finite loss); the message names the step and the last checkpoint."""


class Preempted(Exception):
  """SIGTERM: a checkpoint was saved and the run stopped; rerunning the same command resumes (exit 143)."""
