"""Swin-T on ImageNet-1k (model=swin_s/swin_b via :model=).

Liu et al. 2021, as torchvision's reference recipe: AdamW, lr 1e-3 at batch 1024
(scaled linearly here), weight decay 0.05 not on norms or biases, 300 epochs,
20 warmup epochs then cosine down to 1e-5 (lr x 0.01), label smoothing 0.1,
gradient clipping at global norm 5.0, stochastic depth 0.2 (tiny; 0.3/0.5 for
S/B). Departures until the recipes issue lands: no Mixup (0.8) / CutMix (1.0),
RandAugment (paper; torchvision uses TrivialAugmentWide), random erasing (0.25),
repeated augmentation or weight EMA (torchvision only; the paper uses neither). Bicubic
crops and evaluation resize 232 -> centre crop 224 (torchvision's swin_t weights'
transforms; the paper's repository resizes to 256). As in both, no weight decay on
relative_position_bias_table (vision/train/optim.py decay_mask).
"""
from vision.train.config import default_config, imagenet_data, parse_arg

DROP_PATH = {"swin_t": 0.2, "swin_s": 0.3, "swin_b": 0.5}


def get_config(arg=None):
  a = parse_arg(arg, model="swin_t", batch=1024, dtype="bfloat16")
  c = imagenet_data(default_config(), crop_pct=224 / 232)
  c.data.interpolation = "bicubic"
  c.model.name, c.model.dtype = a.model, a.dtype
  c.model.kwargs.drop_path_rate = DROP_PATH[a.model]
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = 300.0
  c.train.label_smoothing = 0.1
  c.optim.name, c.optim.lr, c.optim.weight_decay = "adamw", 1e-3 * a.batch / 1024, 0.05
  c.optim.warmup_epochs, c.optim.schedule, c.optim.end_lr_factor = 20.0, "cosine", 0.01
  c.optim.grad_clip_norm = 5.0
  return c
