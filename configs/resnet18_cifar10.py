"""ResNet-18 on CIFAR-10 with the CIFAR stem (3x3 stride-1 conv, no max pool).

The common recipe (e.g. kuangliu/pytorch-cifar): SGD momentum 0.9, lr 0.1 at
batch 128, weight decay 5e-4, 200 epochs cosine, random crop (pad 4) + flip,
CIFAR channel statistics. Expected about 95% test top-1.
Variants: --config configs/resnet18_cifar10.py:batch=256,epochs=100
"""
from vision.train.config import cifar_data, default_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=128, epochs=200.0, model="resnet18", dtype="float32")
  c = cifar_data(default_config(), "cifar10")
  c.model.name = a.model
  c.model.dtype = a.dtype
  c.model.kwargs.stem = "cifar"
  c.train.batch_size = a.batch
  c.train.num_epochs = a.epochs
  c.optim.name = "sgd"
  c.optim.lr = 0.1 * a.batch / 128
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  return c
