"""Wide ResNet-28-10 on CIFAR-10 (data=cifar100 via :data=).

Zagoruyko & Komodakis 2016: SGD with Nesterov momentum 0.9, lr 0.1 at batch 128,
weight decay 5e-4, 200 epochs, lr x0.2 at epochs 60, 120 and 160, dropout 0.3
between the convolutions, pad-4 crop + flip. Expected 3.89% (CIFAR-10) / 18.85%
(CIFAR-100) test error with dropout (paper).
"""
from vision.train.config import cifar_data, default_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, data="cifar10", batch=128, dropout=0.3, dtype="float32")
  c = cifar_data(default_config(), a.data)
  c.model.name, c.model.dtype = "wide_resnet28_10", a.dtype
  c.model.kwargs.dropout_rate = a.dropout
  c.train.batch_size = a.batch
  c.train.num_epochs = 200.0
  c.optim.name, c.optim.momentum, c.optim.weight_decay = "nesterov", 0.9, 5e-4
  c.optim.lr = 0.1 * a.batch / 128
  c.optim.schedule, c.optim.step_epochs, c.optim.step_factor = "step", (60.0, 120.0, 160.0), 0.2
  return c
