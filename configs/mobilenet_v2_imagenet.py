"""MobileNetV2 on ImageNet-1k.

torchvision's reference recipe for its mobilenet_v2 weights (71.9% top-1):
SGD momentum 0.9, lr 0.045 at batch 256, weight decay 4e-5 (on all parameters,
as torchvision's default), 300 epochs, lr x0.98 every epoch, 224 inception crops
+ flip. The paper (Sandler et al. 2018) used RMSProp (decay 0.9, momentum 0.9)
with the same lr/decay at batch 1536: recipe=paper selects that optimizer.
"""
from vision.train.config import default_config, imagenet_data, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, recipe="torchvision", batch=256, dtype="bfloat16")
  c = imagenet_data(default_config())
  c.model.name, c.model.dtype = "mobilenet_v2", a.dtype
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = 300.0
  c.optim.lr = 0.045 * a.batch / 256
  c.optim.weight_decay, c.optim.decay_norm_and_bias = 4e-5, True
  c.optim.schedule, c.optim.decay_epochs, c.optim.decay_rate = "exponential", 1.0, 0.98
  if a.recipe == "paper":
    c.optim.name, c.optim.momentum, c.optim.rms_decay, c.optim.eps = "rmsprop", 0.9, 0.9, 1e-3
  else:
    c.optim.name, c.optim.momentum = "sgd", 0.9
  return c
