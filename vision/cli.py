"""Shared plumbing of train.py / eval.py: config flags, one-line errors, exit codes.

Exit 2 with `error: ...` for anything the user can fix (bad config key or value,
unknown model or dataset, a workdir that does not fit); exit 1 for a run that
cannot go on (non-finite loss). Never a traceback for those.
"""
import importlib.util
import logging
import os
import sys

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from vision.errors import TrainingError, UserError, close_matches

CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: configs/<name>.py[:arg].")


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _load_config_file(spec: str):
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    fail(f"config file {path!r} does not exist; pass --config configs/<name>.py")
  module_spec = importlib.util.spec_from_file_location("_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _diagnose(argv, error: Exception):
  """Turns a config-flag failure into the one line that names the bad key or value."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if spec is None:
    fail("missing --config; pass --config configs/<name>.py")
  try:
    config = _load_config_file(spec)
  except SystemExit:
    raise
  except Exception as e:  # a typo inside the config file itself
    text = str(e).strip().strip("'\"").splitlines()[0]
    fail(f"config file {spec.split(':')[0]} failed to load: {text}; see vision/train/config.py for the keys")
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      node, parts = config, a[len("--config."):].split("=", 1)[0].split(".")
      for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
          keys = list(node.keys()) if isinstance(node, ConfigDict) else []
          fail(f"unknown config key {'.'.join(parts[:i + 1])!r}{close_matches(part, keys)}; "
               "see vision/train/config.py for the keys")
        node = node[part]
  fail(f"bad flags: {str(error).strip().splitlines()[0]}")


def parse_flags(argv):
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # absl, config_flags and ConfigDict raise a variety of types
    _diagnose(argv[1:], e)
  if not isinstance(CONFIG.value, ConfigDict):
    _diagnose(argv[1:], ValueError("config could not be loaded"))
  return rest


def run(main):
  """absl app.run with our flag parser and error reporting."""
  def wrapped(argv):
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and tfds are chatty below ERROR
    log = logging.getLogger("vision")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    try:
      main(argv)
    except UserError as e:
      fail(str(e), 2)
    except TrainingError as e:
      fail(str(e), 1)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(wrapped, flags_parser=parse_flags)
