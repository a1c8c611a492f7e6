"""Shared plumbing of train.py / eval.py: config flags, one-line errors, exit codes.

Exit 2 with `error: ...` for anything the user can fix (bad config key or value,
unknown model or dataset, a workdir that does not fit, a full disk); exit 1 for
a run that cannot go on (non-finite loss); exit 143 after SIGTERM once the
checkpoint is saved. Never a traceback for those.
"""
import importlib.util
import logging
import os
import re
import sys

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from vision.errors import Preempted, TrainingError, UserError, WriteError, close_matches

CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: configs/<name>.py[:arg].")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Several processes: call jax.distributed.initialize() first. SLURM, Cloud TPU pods, "
    "Open MPI and Kubernetes are detected; elsewhere also pass the three flags below.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (implies --distributed).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def load_config_file(spec: str):
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    fail(f"config file {path!r} does not exist; pass one of configs/<name>.py")
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
    config = load_config_file(spec)
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
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  bad = re.search(r"flag --config\.([\w.]+)=(.*?): (.*)", text)
  if bad:  # the key exists (checked above), so the value did not parse as the key's type
    key, value, _ = bad.groups()
    current = config
    for part in key.split("."):
      current = current[part]
    fail(f"config.{key} = {value!r} is not a valid {type(current).__name__}; pass a value of that type, like "
         f"the config's --config.{key}={current}")
  fail(f"bad flags: {text}")


KWARGS_PREFIX = "--config.model.kwargs."


def _model_kwargs(argv):
  """(argv without --config.model.kwargs.NAME=VALUE, {NAME: VALUE}). config.model.kwargs is the one open
  mapping, and config_flags can only override keys that exist: these are set after parsing. A VALUE that is a
  Python literal (0.1, True, (1, 2)) is taken as one, anything else as a string."""
  import ast
  rest, kwargs = [], {}
  for a in argv:
    if a.startswith(KWARGS_PREFIX) and "=" in a:
      name, value = a[len(KWARGS_PREFIX):].split("=", 1)
      try:
        kwargs[name] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        kwargs[name] = value
    else:
      rest.append(a)
  return rest, kwargs


def parse_flags(argv):
  argv, kwargs = _model_kwargs(argv)
  sys.argv = [a for a in sys.argv if not a.startswith(KWARGS_PREFIX)]  # config_flags reads overrides from here too
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # absl, config_flags and ConfigDict raise a variety of types
    _diagnose(argv[1:], e)
  if not isinstance(CONFIG.value, ConfigDict):
    _diagnose(argv[1:], ValueError("config could not be loaded"))
  for name, value in kwargs.items():
    CONFIG.value.model.kwargs[name] = value  # create_model refuses a name the model does not take
  return rest


def initialize_distributed():
  """jax.distributed.initialize() when asked for, before anything touches a JAX backend."""
  if not (DISTRIBUTED.value or COORDINATOR.value or NUM_PROCESSES.value is not None):
    return
  import jax
  # CPU processes exchange collectives over gloo (TCP); GPUs and TPUs use their own interconnect.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  except (ValueError, RuntimeError, TypeError) as e:
    fail(f"jax.distributed.initialize failed ({str(e).strip().splitlines()[0][:200]}); on SLURM, a Cloud TPU pod or "
         "Open MPI pass only --distributed, elsewhere --coordinator_address=HOST:PORT --num_processes=N "
         "--process_id=I on every process")


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
    initialize_distributed()
    try:
      main(argv)
    except WriteError as e:
      # Orbax's other background writes fail after this one and, at interpreter exit, log tracebacks of their
      # own that would bury the line; the metrics files are flushed and nothing else is pending.
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(2)
    except UserError as e:
      fail(str(e), 2)
    except TrainingError as e:
      fail(str(e), 1)
    except Preempted as e:  # 128 + SIGTERM, as if the signal had ended us: schedulers see a preempted job
      print(str(e), file=sys.stderr)
      sys.exit(143)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(wrapped, flags_parser=parse_flags)
