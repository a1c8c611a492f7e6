"""Train a model: python train.py --config configs/<name>.py --workdir runs/<name>

Restarting the same command resumes from the workdir's latest checkpoint.
Override any config value on the command line: --config.optim.lr=0.05
"""
from absl import flags

from vision import cli

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.", required=True)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; configure with --config.<key>=<value>")
  if cli.CONFIG.value.task == "dinov2":  # self-supervised pretraining (vision/ssl)
    from vision.ssl import loop as ssl_loop
    results = ssl_loop.train_and_evaluate(cli.CONFIG.value, WORKDIR.value)
    print(f"final {ssl_loop.summary(results)}" if results else "done")
    return
  from vision.train.loop import train_and_evaluate
  results = train_and_evaluate(cli.CONFIG.value, WORKDIR.value)
  if results:
    print(f"final {cli.CONFIG.value.data.eval_split}: top1 {results['top1']:.4f} top5 {results['top5']:.4f} "
          f"loss {results['loss']:.4f} ({results['count']} images)")


if __name__ == "__main__":
  cli.run(main)
