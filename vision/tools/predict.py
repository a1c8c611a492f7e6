"""Top-k classes of image files from a checkpoint (the library side of predict.py)."""
import sys

import numpy as np

from vision.errors import UserError

BATCH = 32  # the most images per forward pass


def predict_files(config, workdir, paths, step=None, top_k=5, out=sys.stdout, err=sys.stderr) -> int:
  """Prints each readable file's top-k classes and probabilities to `out`, one line per unreadable file to
  `err`; returns 0 when at least one image was classified. UserError when none was, or the checkpoint is unusable.

  Files are preprocessed by vision.data.preprocess.eval_image (the evaluation transform of config.data);
  class names come from the checkpoint's meta (indices for a converted checkpoint): no dataset is needed.
  """
  from vision.data.preprocess import eval_image_file
  from vision.tools.introspect import probabilities_fn
  from vision.train.loop import restore_for_eval
  good, images = [], []
  for path in paths:  # before the checkpoint: a list of only bad files fails fast
    try:
      images.append(eval_image_file(path, config.data))
      good.append(path)
    except UserError as e:
      print(f"skipped: {e}", file=err)
  if not good:
    raise UserError(f"none of the {len(paths)} files could be read as an image")
  exp, variables, step = restore_for_eval(config, workdir, step, facts_from_meta=True)
  names = exp.class_names or [str(i) for i in range(exp.num_classes)]
  probabilities = probabilities_fn(exp.model)
  k = min(top_k, exp.num_classes)
  batch = min(BATCH, len(good))  # every chunk padded to this size: one compile
  for start in range(0, len(good), batch):
    chunk = np.stack(images[start:start + batch])
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
    probs = np.asarray(probabilities(variables, padded))[:len(chunk)]
    for path, p in zip(good[start:start + batch], probs):
      print(path, file=out)
      for c in np.argsort(-p, kind="stable")[:k]:
        print(f"  {100 * p[c]:6.2f}%  {names[c]}", file=out)
  print(f"{len(good)} of {len(paths)} images classified with {config.model.name} (step {step})", file=err)
  return 0
