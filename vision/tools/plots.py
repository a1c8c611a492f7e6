"""Pictures of a run, as PNG files in <workdir>/plots (written by `python eval.py ... --plots`).

    confusion_<split>_step<N>.png     confusion matrix (cells coloured by the row's share, counts written
                                      when there are at most 30 classes)
    reliability_<split>_step<N>.png   reliability diagram: accuracy vs confidence per ECE bin
    predictions_<split>_step<N>.png   up to 25 images of the split's first batch, mistakes first, with
                                      predicted and true labels (mistakes in red)
    curves.png                        loss, accuracy and learning rate over steps from metrics.jsonl
    filters_step<N>.png               the first convolution's filters
    features_<layer>_step<N>.png      the maps of a sown layer for one image
    gradcam_<layer>_class<k>_step<N>.png  Grad-CAM of one image for a class

Figures are drawn on matplotlib Figure objects (the Agg renderer, no pyplot and
no display) at DPI dots per inch; sizes are in the function docstrings. This
module is imported only when pictures are asked for, so training never pays
for matplotlib.
"""
import logging
import math
import os

import numpy as np
from matplotlib.figure import Figure

log = logging.getLogger("vision")
DPI = 100
GRID = 25  # images in the predictions grid


def _save(fig, path):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})  # zlib's default 6 triples the time for 10% less
  return path


def _display(image, mean, std):
  """A normalised image [H, W, C] back to [0, 1] for display (2-D for one channel)."""
  image = np.clip(np.asarray(image, np.float32) * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
  return image[..., 0] if image.shape[-1] == 1 else image


def _show(ax, image, mean, std):
  picture = _display(image, mean, std)
  ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def confusion_matrix(path, confusion, class_names, title=""):
  """Rows true, columns predicted, coloured by the share of the row. Square: 5 to 16 inches."""
  confusion = np.asarray(confusion)
  k = len(confusion)
  size = float(np.clip(0.5 * k + 2.0, 5.0, 16.0))
  fig = Figure(figsize=(size, size))
  ax = fig.add_subplot()
  shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  im = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  if k <= 30:
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(n)[:12] for n in class_names], rotation=90 if k > 10 else 0)
    ax.set_yticks(ticks, [str(n)[:12] for n in class_names])
    for i in range(k):
      for j in range(k):
        if confusion[i, j]:
          ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                  color="white" if shares[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  fig.tight_layout()
  return _save(fig, path)


def reliability_diagram(path, ece_bins, ece, title=""):
  """Accuracy and count per confidence bin against the diagonal. 6 x 6 inches."""
  edges = np.asarray(ece_bins["edges"])
  centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
  accuracy = np.array([np.nan if a is None else a for a in ece_bins["accuracy"]])
  confidence = np.array([np.nan if c is None else c for c in ece_bins["confidence"]])
  fig = Figure(figsize=(6, 6))
  ax = fig.add_subplot()
  ax.bar(centers, np.nan_to_num(accuracy), width=width, edgecolor="black", color="tab:blue", label="accuracy")
  ax.bar(centers, np.nan_to_num(confidence - accuracy), bottom=np.nan_to_num(accuracy), width=width,
         color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
  ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
  for x, n in zip(centers, ece_bins["count"]):
    if n:
      ax.text(x, 0.02, str(n), ha="center", fontsize=7, rotation=90)
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top softmax probability)", ylabel="accuracy",
         title=f"{title} ECE {ece:.4f} ({len(centers)} bins)")
  ax.legend(loc="upper left")
  fig.tight_layout()
  return _save(fig, path)


def choose_grid(labels, predictions, n=GRID):
  """Indices to show: the mistakes first (at most half the grid), then correct ones, each in split order."""
  wrong = [i for i in range(len(labels)) if predictions[i] != labels[i]]
  right = [i for i in range(len(labels)) if predictions[i] == labels[i]]
  wrong = wrong[:max(n // 2, n - len(right))]
  return wrong + right[:n - len(wrong)]


def prediction_grid(path, images, labels, probs, class_names, mean, std, title=""):
  """Images with 'predicted (p)' over 'true'; mistakes framed and labelled in red. 2 x 2.3 inches per cell,
  5 columns."""
  cols = min(5, len(images))
  rows = math.ceil(len(images) / cols)
  fig = Figure(figsize=(2.0 * cols, 2.3 * rows + 0.4))
  for n, (image, label, p) in enumerate(zip(images, labels, probs)):
    ax = fig.add_subplot(rows, cols, n + 1)
    _show(ax, image, mean, std)
    pred = int(np.argmax(p))
    wrong = pred != int(label)
    colour = "red" if wrong else "green"
    ax.set_title(f"{class_names[pred]} ({p[pred]:.2f})\ntrue: {class_names[int(label)]}", fontsize=9, color=colour)
    for spine in ax.spines.values():
      spine.set_edgecolor(colour)
      spine.set_linewidth(4 if wrong else 1)
  fig.suptitle(title)
  height = 2.3 * rows + 0.4
  # Fixed margins: tight_layout measures every label and takes longer than the drawing.
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - 0.8 / height, wspace=0.1, hspace=0.45)
  return _save(fig, path)


def _series(records, key):
  """(steps, values) of one metric; a step logged twice (a resumed run) keeps its last value."""
  by_step = {r["step"]: r[key] for r in records if key in r}
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def training_curves(path, records):
  """Loss, accuracy and learning rate against the step, from metrics.jsonl records. 15 x 4 inches."""
  fig = Figure(figsize=(15, 4))
  panels = [("loss", ["train/loss", "eval/loss"]), ("accuracy", ["train/top1", "eval/top1", "eval/top5"]),
            ("learning rate", ["train/lr"])]
  for n, (name, keys) in enumerate(panels):
    ax = fig.add_subplot(1, 3, n + 1)
    for key in keys:
      steps, values = _series(records, key)
      if steps:
        ax.plot(steps, values, marker="o" if key.startswith("eval/") else None, markersize=3, label=key)
    if name == "loss" and any(v > 0 for k in keys for v in _series(records, k)[1]):
      ax.set_yscale("log")
    ax.set(xlabel="step", title=name)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.92, wspace=0.22)
  return _save(fig, path)


def filters(path, kernel, title=""):
  """Each filter [kh, kw, cin] scaled to [0, 1] (RGB for 3 input channels, grey otherwise); at most 64,
  8 columns of 1.2 inches."""
  kernel = np.asarray(kernel, np.float32)[..., :64]
  count = kernel.shape[-1]
  cols = min(8, count)
  rows = math.ceil(count / cols)
  fig = Figure(figsize=(1.2 * cols, 1.2 * rows + 0.5))
  for n in range(count):
    f = kernel[..., n]
    f = (f - f.min()) / max(f.max() - f.min(), 1e-12)
    ax = fig.add_subplot(rows, cols, n + 1)
    ax.imshow(f if f.shape[-1] == 3 else f.mean(-1), cmap=None if f.shape[-1] == 3 else "gray",
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def feature_maps(path, image, activations, mean, std, title="", max_maps=32):
  """The input and up to `max_maps` channels of activations [h, w, k], 8 columns of 1.6 inches."""
  count = min(max_maps, activations.shape[-1])
  cols = min(8, count + 1)
  rows = math.ceil((count + 1) / cols)
  fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.5))
  _show(fig.add_subplot(rows, cols, 1), image, mean, std)
  for n in range(count):
    ax = fig.add_subplot(rows, cols, n + 2)
    ax.imshow(activations[..., n], cmap="viridis", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(str(n), fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def grad_cam(path, image, cam, mean, std, title=""):
  """Image | Grad-CAM heat map | overlay. 12 x 4.4 inches."""
  fig = Figure(figsize=(12, 4.4))
  picture = _display(image, mean, std)
  grey = picture if picture.ndim == 2 else picture.mean(-1)
  for n, name in enumerate(("image", "Grad-CAM", "overlay")):
    ax = fig.add_subplot(1, 3, n + 1)
    if n == 0:
      _show(ax, image, mean, std)
    elif n == 1:
      im = ax.imshow(cam, cmap="jet", vmin=0.0, vmax=1.0)
      fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    else:
      ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
      ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(name)
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def _clean(name):
  return str(name).replace("/", "_").replace(":", "_").replace("#", "_")


def check_request(exp, variables, layer=None, class_index=None, image_path=None) -> str | None:
  """The layer to draw (by default the deepest sown stage; None when the model sows no feature maps);
  UserError for a request that cannot be met (eval.py asks before it evaluates)."""
  import jax

  from vision.errors import UserError
  from vision.tools import introspect
  if jax.process_count() > 1:
    raise UserError("pictures are drawn by a single process; run eval.py --plots on one host")
  if class_index is not None and not 0 <= class_index < exp.num_classes:
    raise UserError(f"--class_index={class_index} is out of range; the model has {exp.num_classes} classes")
  if image_path:
    from vision.data.preprocess import eval_image_file
    eval_image_file(image_path, exp.config.data)  # UserError naming the file when it cannot be read
  return introspect.check_spatial_layer(exp.model, variables, exp.image_shape, layer)


def write_all(exp, variables, workdir, split, step, results, image_path=None, layer=None, class_index=None):
  """Every picture for a restored checkpoint (see the module docstring); returns the paths written.

  `exp`: a vision.train.loop.Experiment; `results`: its evaluation of `split`.
  Feature maps and Grad-CAM use `image_path` (preprocessed as evaluation
  does), or the split's first image; `layer` defaults to the deepest sown
  stage, `class_index` to the predicted class.
  """
  from vision.tools import introspect
  from vision.train import steps
  from vision.train.writers import read_metrics
  layer = check_request(exp, variables, layer, class_index)
  d, names, out = exp.config.data, exp.class_names, os.path.join(workdir, "plots")
  tag = f"{_clean(split)}_step{step}"
  paths = [confusion_matrix(os.path.join(out, f"confusion_{tag}.png"), results["confusion_matrix"], names,
                            f"{exp.config.model.name} on {split}, step {step}: top-1 {results['top1']:.4f}"),
           reliability_diagram(os.path.join(out, f"reliability_{tag}.png"), results["ece_bins"], results["ece"],
                               f"{split} step {step}:")]
  # The grid's images: the split's first batch, with predictions for it alone.
  batches, _ = exp.pipeline.eval_batches(d, split, exp.config.train.eval_batch_size)
  batch = next(iter(batches))
  keep = batch["mask"] > 0
  # The grid shows, and the model sees, normalised images (uint8 batches are normalised by the steps).
  batch["image"] = np.asarray(steps.normalize_images(batch["image"], d.mean, d.std))
  images, labels = batch["image"][keep], batch["label"][keep]
  probs = np.asarray(introspect.probabilities_fn(exp.model)(variables, batch["image"]))[keep]
  shown = choose_grid(labels, probs.argmax(1))
  paths.append(prediction_grid(os.path.join(out, f"predictions_{tag}.png"), images[shown], labels[shown],
                               probs[shown], names, d.mean, d.std,
                               f"{split}: {len(shown)} of the first {len(labels)} images, mistakes first (red)"))
  records = read_metrics(workdir)
  if records:
    paths.append(training_curves(os.path.join(out, "curves.png"), records))
  else:
    log.info("no metrics.jsonl in %s: no training curves", workdir)
  first = introspect.first_conv_kernel(exp.model, variables, exp.image_shape)
  if first:
    paths.append(filters(os.path.join(out, f"filters_step{step}.png"), first[1],
                         f"{first[0]}: {first[1].shape[-1]} filters {first[1].shape[0]}x{first[1].shape[1]}"))
  if layer is None:
    log.info("%s sows no feature maps: no feature-map or Grad-CAM picture", exp.config.model.name)
    return paths
  if image_path:
    from vision.data.preprocess import eval_image_file
    image, truth = eval_image_file(image_path, d), ""
  else:
    image, truth = images[0], f", true {names[int(labels[0])]}"
    image_path = f"{split}[0]"
  cam, used, p, acts = introspect.grad_cam(exp.model, variables, image, layer, class_index)
  paths.append(feature_maps(os.path.join(out, f"features_{_clean(layer)}_step{step}.png"), image, acts,
                            d.mean, d.std, f"{layer} {tuple(acts.shape)} of {image_path}"))
  paths.append(grad_cam(os.path.join(out, f"gradcam_{_clean(layer)}_class{used}_step{step}.png"), image, cam,
                        d.mean, d.std, f"Grad-CAM at {layer} for class {names[used]} (p {p[used]:.3f}) of "
                                       f"{image_path}{truth}; predicted {names[int(np.argmax(p))]}"))
  return paths
