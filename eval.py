"""Evaluate a checkpoint: python eval.py --config configs/<name>.py --workdir runs/<name> [--step N] [--split S]

Writes <workdir>/eval_<split>_step<N>.json with top-1, top-5, loss, per-class
accuracy, precision, recall and F1 (with macro and weighted averages), the
confusion matrix and the expected calibration error (15 bins) with its bins.

--plots also draws PNGs into <workdir>/plots (vision/tools/plots.py): confusion
matrix, reliability diagram, a grid of predictions, training curves, first-layer
filters, and the feature maps and Grad-CAM of one image (--image, default the
split's first) at one sown layer (--layer, default the deepest stage) for one
class (--class_index, default the predicted one).
"""
from absl import flags

from vision import cli

WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding the run's checkpoints.", required=True)
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")
PLOTS = flags.DEFINE_bool("plots", False, "Also write PNG pictures into <workdir>/plots.")
IMAGE = flags.DEFINE_string("image", None, "With --plots: image file for feature maps and Grad-CAM.")
LAYER = flags.DEFINE_string("layer", None, "With --plots: sown layer (stage1, ...) for feature maps and Grad-CAM.")
CLASS_INDEX = flags.DEFINE_integer("class_index", None, "With --plots: class for Grad-CAM (default: predicted).")
EMA = flags.DEFINE_bool("ema", False, "Evaluate the model EMA's weights (config.train.ema_decay > 0) instead of the raw.")
PROBE = flags.DEFINE_bool("probe", False, "Frozen-backbone evaluation instead: kNN, linear probes and few-shot "
                          "(vision/evaluators/transfer.py).")
SHOTS = flags.DEFINE_list("shots", ["1", "5", "10", "25"], "With --probe: shots per class of the few-shot evaluation "
                          "('' for none).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if cli.CONFIG.value.task == "dinov2":  # kNN and linear probes of the frozen teacher (vision/ssl)
    from vision.ssl import loop as ssl_loop
    results, path = ssl_loop.evaluate_checkpoint(cli.CONFIG.value, WORKDIR.value, STEP.value, SPLIT.value)
    print(ssl_loop.summary(results))
    print(f"wrote {path}")
    return
  if not PLOTS.value and (IMAGE.value or LAYER.value or CLASS_INDEX.value is not None):
    cli.fail("--image, --layer and --class_index go with --plots")
  if PLOTS.value:
    try:
      from vision.tools import plots  # matplotlib only when pictures are asked for
    except ImportError as e:
      cli.fail(f"--plots needs matplotlib ({e}); pip install matplotlib")
  import jax

  from vision.train.loop import restore_for_eval, write_results
  config = cli.CONFIG.value
  if PROBE.value:
    if PLOTS.value:
      cli.fail("--probe and --plots are separate runs; pass one of them")
    try:
      shots = tuple(int(k) for k in SHOTS.value if k)
    except ValueError:
      cli.fail(f"--shots={','.join(SHOTS.value)} must be comma-separated integers, e.g. --shots=1,5,10,25")
    from vision.evaluators import transfer
    results, path = transfer.probe_checkpoint(config, WORKDIR.value, STEP.value, SPLIT.value, shots, EMA.value)
    print(transfer.summary(results))
    print(f"wrote {path}")
    return
  exp, variables, step = restore_for_eval(config, WORKDIR.value, STEP.value, ema=EMA.value)
  if PLOTS.value:  # a bad --layer or --class_index fails before the evaluation, not after
    plots.check_request(exp, variables, LAYER.value, CLASS_INDEX.value, IMAGE.value)
  split = SPLIT.value or config.data.eval_split
  results = exp.evaluate(variables, split)
  if EMA.value:
    results["weights"] = "ema"
  path = write_results(WORKDIR.value, split, step, results, "_ema" if EMA.value else "") \
      if jax.process_index() == 0 else ""
  print(f"{results['count']} images: top1 {results['top1']:.4f} top5 {results['top5']:.4f} loss {results['loss']:.4f} "
        f"macro-F1 {results['macro']['f1']:.4f} ECE {results['ece']:.4f}")
  print(f"wrote {path}")
  if PLOTS.value:
    for picture in plots.write_all(exp, variables, WORKDIR.value, split, step, results, IMAGE.value, LAYER.value,
                                   CLASS_INDEX.value):
      print(f"wrote {picture}")


if __name__ == "__main__":
  cli.run(main)
