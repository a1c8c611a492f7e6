"""Classify image files: python predict.py --config configs/<name>.py --workdir runs/<name> a.jpg b.png ...

Restores the latest (or --step) checkpoint's parameters and batch statistics,
preprocesses every file exactly as evaluation does (config.data: resize or
center crop, normalisation), and prints the top-5 classes with their
probabilities per image. A file that cannot be read is reported on stderr in
one line and skipped. Exit status 0 when at least one image was classified,
2 when none could be (or the checkpoint/config is unusable).

Class names come from the checkpoint (saved with it by train.py), so no
dataset is needed; a converted PyTorch checkpoint has none and prints class
indices.
"""
from absl import flags

from vision import cli

WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding the run's checkpoints.", required=True)
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to use (default: the latest).")
TOP_K = flags.DEFINE_integer("top_k", 5, "How many classes to print per image.")


def main(argv):
  if len(argv) < 2:
    cli.fail("no image files given; usage: python predict.py --config C --workdir W image.jpg ...")
  if TOP_K.value < 1:
    cli.fail(f"--top_k={TOP_K.value} must be at least 1")
  from vision.tools.predict import predict_files
  predict_files(cli.CONFIG.value, WORKDIR.value, argv[1:], STEP.value, TOP_K.value)


if __name__ == "__main__":
  cli.run(main)
