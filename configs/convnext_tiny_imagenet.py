"""ConvNeXt-T on ImageNet-1k (model=convnext_small/base/large via :model=).

Liu et al. 2022: AdamW, lr 4e-3 at batch 4096 (scaled linearly here), 300
epochs, 20 warmup epochs then cosine, weight decay 0.05 not on norms or biases,
stochastic depth 0.1 (tiny; 0.4/0.5/0.5 for S/B/L), layer scale 1e-6 (in the
model), label smoothing 0.1. Departures until the recipes issue lands: no Mixup
(0.8) / CutMix (1.0), RandAugment (9, 0.5), random erasing (0.25) or weight EMA.
Bicubic crops and evaluation resize 256 -> centre crop 224, as the paper's repository (timm's transforms).
"""
from vision.train.config import default_config, imagenet_data, parse_arg

DROP_PATH = {"convnext_tiny": 0.1, "convnext_small": 0.4, "convnext_base": 0.5, "convnext_large": 0.5}


def get_config(arg=None):
  a = parse_arg(arg, model="convnext_tiny", batch=1024, dtype="bfloat16")
  c = imagenet_data(default_config())
  c.data.interpolation = "bicubic"
  c.model.name, c.model.dtype = a.model, a.dtype
  c.model.kwargs.drop_path_rate = DROP_PATH[a.model]
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = 300.0
  c.train.label_smoothing = 0.1
  c.optim.name, c.optim.lr, c.optim.weight_decay = "adamw", 4e-3 * a.batch / 4096, 0.05
  c.optim.warmup_epochs, c.optim.schedule = 20.0, "cosine"
  return c
