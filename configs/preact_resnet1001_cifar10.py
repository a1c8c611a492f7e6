"""Pre-activation ResNet-1001 on CIFAR-10 (model=resnet164 via :model=; data=cifar100).

He et al. 2016, "Identity Mappings in Deep Residual Networks": SGD momentum 0.9,
lr 0.1 at batch 128, weight decay 1e-4, lr /10 at 32k and 48k iterations, end at
64k (= epochs 82, 123, 164 of 391 steps), pad-4 crop + flip. The paper warms up
at lr 0.01 for ~400 iterations; here a 1-epoch linear warmup. Expected 4.92%
test error (paper, mean of 5 runs, ResNet-1001 on CIFAR-10).
"""
from vision.train.config import cifar_data, default_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="resnet1001", data="cifar10", batch=128, dtype="float32")
  c = cifar_data(default_config(), a.data)
  c.model.name, c.model.dtype = a.model, a.dtype
  c.train.batch_size = a.batch
  c.train.num_epochs = 164.0
  c.optim.name, c.optim.momentum, c.optim.weight_decay = "sgd", 0.9, 1e-4
  c.optim.lr = 0.1 * a.batch / 128
  c.optim.warmup_epochs = 1.0
  c.optim.schedule, c.optim.step_epochs = "step", (82.0, 123.0)
  return c
