"""EfficientNet-B0 on ImageNet-1k (model=efficientnet_b1..b7 with their resolutions via :model=).

Tan & Le 2019 (the TF reference): RMSProp (decay 0.9, momentum 0.9, eps 1e-3),
lr 0.016 x batch/256 with 5 warmup epochs then x0.97 every 2.4 epochs, weight
decay 1e-5, 350 epochs, dropout and stochastic depth 0.2 (in the model), label
smoothing 0.1. Departures until the recipes issue lands: no AutoAugment and no
weight EMA (0.9999); BatchNorm momentum is 0.9, not 0.99.
torchvision's efficientnet_b0 weights were ported from TF, so the paper's recipe
is the reference: bicubic crops, evaluation resize to size + 32 then a centre crop
(torchvision's weights' transforms agree for B0, 256 -> 224; for B3 they resize to
320, TF to 332).
"""
from vision.models import model_info
from vision.train.config import default_config, imagenet_data, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="efficientnet_b0", batch=256, dtype="bfloat16")
  size = model_info(a.model).default_image_size
  c = imagenet_data(default_config(), image_size=size, crop_pct=size / (size + 32))
  c.data.interpolation = "bicubic"
  c.model.name, c.model.dtype = a.model, a.dtype
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = 350.0
  c.train.label_smoothing = 0.1
  c.optim.name, c.optim.momentum, c.optim.rms_decay, c.optim.eps = "rmsprop", 0.9, 0.9, 1e-3
  c.optim.lr = 0.016 * a.batch / 256
  c.optim.weight_decay = 1e-5
  c.optim.warmup_epochs = 5.0
  c.optim.schedule, c.optim.decay_epochs, c.optim.decay_rate = "exponential", 2.4, 0.97
  return c
