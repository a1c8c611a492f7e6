"""ResNet-50 (v1.5) on ImageNet-1k: the standard 90-epoch recipe (recipe=v1) or torchvision's "new recipe" (v2).

recipe=v1 (default): He et al. 2016 with Goyal et al. 2017 ("Accurate, Large
Minibatch SGD") scaling, as torchvision's reference recipe: SGD momentum 0.9,
lr 0.1 x batch/256, weight decay 1e-4 not on BN parameters or biases, 90
epochs, 5 warmup epochs then cosine (or step decay x0.1 at 30/60/80 with
schedule=step), optional label smoothing, 224 inception crops + flips, eval at
resize 256 / center crop 224. Expected: about 76-77% top-1 (76.1% torchvision
step recipe).

recipe=v2 reproduces torchvision's IMAGENET1K_V2 weights (80.858% top-1;
"How to train state-of-the-art models using TorchVision's latest primitives",
Vryniotis 2021; references/classification/README.md): batch 1024, SGD
momentum 0.9, lr 0.5, 600 epochs, 5 linear warmup epochs from 0.01 x lr then
cosine, weight decay 2e-5 not on norms, label smoothing 0.1, Mixup 0.2 and
CutMix 1.0 (one of the two per batch), TrivialAugmentWide, random erasing 0.1,
repeated augmentation x4, model EMA (decay 0.99998 every 32 steps, adjusted
to the batch and epochs as torchvision does: 0.99891 per update; copied from
the weights during warmup), FixRes: train at 176 px, evaluate at resize 232 /
center crop 224. Both weights are evaluated at every eval (eval/ema_top1 is the
published number's counterpart).
Departures from v2: torchvision also decays biases (2e-5; here biases are not
decayed, as in v1) and uses its RASampler's shuffling (here repeated copies
are consecutive in the stream, vision/data/pipeline.py); bf16 instead of fp16 AMP.

Needs imagenet2012 prepared in a tfds data_dir (see the README).
Variants: --config configs/resnet50_imagenet.py:batch=1024,schedule=step,smoothing=0.1,model=resnet101
          --config configs/resnet50_imagenet.py:recipe=v2
"""
from vision.errors import UserError
from vision.train.config import default_config, imagenet_data, parse_arg


def ema_decay_per_update(decay, every, batch, epochs):
  """torchvision train.py: alpha = (1 - decay) x batch x every / epochs, per EMA update (every `every` steps)."""
  return 1.0 - min(1.0, (1.0 - decay) * batch * every / epochs)


def get_config(arg=None):
  a = parse_arg(arg, recipe="v1", batch=0, schedule="cosine", smoothing=-1.0, epochs=0.0, model="resnet50",
                dtype="bfloat16", warmup=5.0)
  if a.recipe not in ("v1", "v2"):
    raise UserError(f"recipe={a.recipe!r} is not one of ['v1', 'v2']")
  v2 = a.recipe == "v2"
  batch = a.batch or (1024 if v2 else 256)
  epochs = a.epochs or (600.0 if v2 else 90.0)
  c = default_config()
  c.model.name = a.model
  c.model.dtype = a.dtype
  imagenet_data(c)
  c.train.batch_size = batch
  c.train.eval_batch_size = batch
  c.train.num_epochs = epochs
  c.train.label_smoothing = a.smoothing if a.smoothing >= 0 else (0.1 if v2 else 0.0)
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.schedule = a.schedule
  c.optim.warmup_epochs = a.warmup
  c.optim.step_epochs = (30.0, 60.0, 80.0)
  if not v2:
    c.optim.lr = 0.1 * batch / 256
    c.optim.weight_decay = 1e-4
    return c
  c.optim.lr = 0.5 * batch / 1024
  c.optim.weight_decay = 2e-5
  c.optim.warmup_init_factor = 0.01  # --lr-warmup-decay default
  c.data.image_size = 176  # --train-crop-size 176
  c.data.eval_image_size = 224  # --val-crop-size 224 after --val-resize-size 232
  c.data.crop_pct = 224 / 232
  c.data.augment = "trivialaugment+erasing(p=0.1)"
  c.data.repeated_augment = 4
  c.train.mixup_alpha, c.train.cutmix_alpha, c.train.mix_switch_prob = 0.2, 1.0, 0.5
  c.train.ema_every = 32
  c.train.ema_decay = ema_decay_per_update(0.99998, 32, batch, epochs)
  c.train.ema_warmup_epochs = a.warmup
  c.train.best_metric = "top1"
  return c
