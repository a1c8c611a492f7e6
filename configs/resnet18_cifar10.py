"""ResNet-18 on CIFAR-10 with the CIFAR stem (3x3 stride-1 conv, no max pool).

The common recipe (e.g. kuangliu/pytorch-cifar): SGD momentum 0.9, lr 0.1 at
batch 128, weight decay 5e-4, 200 epochs cosine, random crop (pad 4) + flip,
CIFAR channel statistics. Expected about 95% test top-1.
Variants: --config configs/resnet18_cifar10.py:batch=256,epochs=100
"""
from vision.train.config import default_config, parse_arg

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config(arg=None):
  a = parse_arg(arg, batch=128, epochs=200.0, model="resnet18", dtype="float32")
  c = default_config()
  c.model.name = a.model
  c.model.dtype = a.dtype
  c.model.kwargs.stem = "cifar"
  c.data.name = "cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 32
  c.data.train_crop = "pad_random"
  c.data.pad = 4
  c.data.eval_crop = "resize"
  c.data.mean = CIFAR10_MEAN
  c.data.std = CIFAR10_STD
  c.data.shuffle_buffer = 50_000
  c.train.batch_size = a.batch
  c.train.eval_batch_size = 500
  c.train.num_epochs = a.epochs
  c.train.log_every = 100
  c.optim.name = "sgd"
  c.optim.lr = 0.1 * a.batch / 128
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  return c
