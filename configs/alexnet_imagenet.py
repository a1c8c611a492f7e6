"""AlexNet on ImageNet-1k.

Default (recipe=torchvision): torchvision's reference recipe for its alexnet
weights (56.5% top-1): SGD momentum 0.9, lr 0.01 at batch 256, weight decay 1e-4,
90 epochs, lr x0.1 every 30 epochs, 224 inception crops + flip.
recipe=paper: Krizhevsky et al. 2012: batch 128, lr 0.01, momentum 0.9, weight
decay 5e-4, lr divided by 10 three times (the paper on plateaus; here at epochs
30/60/80 of 90), with model=alexnet_lrn for the LRN + overlapping-pool network.
Departures from the paper: one tower instead of two GPUs' split, inception crops
instead of fixed 224 crops of 256 images plus PCA colour noise.
"""
from vision.train.config import default_config, imagenet_data, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, recipe="torchvision", model="alexnet", dtype="bfloat16")
  c = imagenet_data(default_config())
  c.model.name, c.model.dtype = a.model, a.dtype
  c.optim.name, c.optim.momentum, c.optim.schedule = "sgd", 0.9, "step"
  c.train.num_epochs = 90.0
  if a.recipe == "paper":
    c.train.batch_size = c.train.eval_batch_size = 128
    c.optim.lr, c.optim.weight_decay, c.optim.step_epochs = 0.01, 5e-4, (30.0, 60.0, 80.0)
  else:
    c.train.batch_size = c.train.eval_batch_size = 256
    c.optim.lr, c.optim.weight_decay, c.optim.step_epochs = 0.01, 1e-4, (30.0, 60.0)
  return c
