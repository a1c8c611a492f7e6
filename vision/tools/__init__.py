"""Tools around the models: the model-size report (`python -m vision.tools.summary`), visualisation, benchmarks."""


def require_at_least(parser, args, **least):
  """A tool's numeric arguments: parser.error (its usage, one error line, exit 2) for the first one below its
  least value, before it can end as a traceback or a meaningless figure. An argument left at None passes."""
  for name, low in least.items():
    value = getattr(args, name)
    if value is not None and value < low:
      parser.error(f"--{name.replace('_', '-')} must be at least {low}, not {value}")
