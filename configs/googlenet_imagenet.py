"""GoogLeNet (Inception v1, with BatchNorm as torchvision's) on ImageNet-1k.

Szegedy et al. 2015: SGD momentum 0.9, learning rate decreased by 4% every 8
epochs, auxiliary classifier losses weighted by 0.3 during training only
(config.model.aux_loss_weight; the model sows its aux logits in training).
The paper gives no base lr or decay; those come from BVLC's Caffe reproduction
(base lr 0.01 at batch 32, weight decay 2e-4, ~60 epochs), scaled linearly to
batch 256 (lr 0.08). Departures: inception crops (scale 0.08-1) stand in for
the paper's photometric distortions and multi-scale crops; no Polyak averaging
(model EMA comes with the recipes issue). torchvision's own googlenet weights
were ported from TensorFlow, so there is no torchvision recipe to follow.
"""
from vision.train.config import default_config, imagenet_data, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=256, epochs=60.0, dtype="bfloat16")
  c = imagenet_data(default_config())
  c.model.name, c.model.dtype = "googlenet", a.dtype
  c.model.aux_loss_weight = 0.3
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = a.epochs
  c.optim.name, c.optim.momentum, c.optim.weight_decay = "sgd", 0.9, 2e-4
  c.optim.lr = 0.01 * a.batch / 32
  c.optim.schedule, c.optim.decay_epochs, c.optim.decay_rate = "exponential", 8.0, 0.96
  return c
