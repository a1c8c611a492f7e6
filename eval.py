"""Evaluate a checkpoint: python eval.py --config configs/<name>.py --workdir runs/<name> [--step N] [--split S]

Writes <workdir>/eval_<split>_step<N>.json with top-1, top-5, loss, per-class
accuracy and the confusion matrix.
"""
from absl import flags

from vision import cli

WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding the run's checkpoints.", required=True)
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  from vision.train.loop import evaluate_checkpoint
  results, path = evaluate_checkpoint(cli.CONFIG.value, WORKDIR.value, STEP.value, SPLIT.value)
  print(f"{results['count']} images: top1 {results['top1']:.4f} top5 {results['top5']:.4f} loss {results['loss']:.4f}")
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
