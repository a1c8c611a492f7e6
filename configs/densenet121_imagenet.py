"""DenseNet-121 on ImageNet-1k (model=densenet169/201/161 via :model=).

Huang et al. 2017 (and torchvision's reference, 74.4% top-1): SGD with Nesterov
momentum 0.9, lr 0.1 at batch 256, weight decay 1e-4, 90 epochs, lr x0.1 at
epochs 30 and 60, 224 inception crops + flip.
"""
from vision.train.config import default_config, imagenet_data, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="densenet121", batch=256, dtype="bfloat16")
  c = imagenet_data(default_config())
  c.model.name, c.model.dtype = a.model, a.dtype
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = 90.0
  c.optim.name, c.optim.momentum, c.optim.weight_decay = "nesterov", 0.9, 1e-4
  c.optim.lr = 0.1 * a.batch / 256
  c.optim.schedule, c.optim.step_epochs = "step", (30.0, 60.0)
  return c
