"""LeNet-5 on the embedded handwritten digits (scikit-learn's 8x8 digits, upscaled to 32x32).

The default job: no network, about half a minute on two CPU cores, >= 98% test
top-1 (measured figures in the README). Recipe: Adam-style optimizer (AdamW,
lr 3e-3, no weight decay), 40 epochs of 1,437 images at batch 64, cosine decay, small
random translations (zero-pad 2 px, random 32x32 crop). No flips: digits are not
mirror-symmetric.
"""
from vision.train.config import default_config


def get_config(arg=None):
  del arg
  c = default_config()
  c.model.name = "lenet5"
  c.data.name = "digits"
  c.data.image_size = 32
  c.data.channels = 1
  c.data.train_crop = "pad_random"
  c.data.pad = 2
  c.data.flip = False
  c.data.eval_crop = "resize"
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.data.shuffle_buffer = 2048
  c.data.cache = True
  c.train.batch_size = 64
  c.train.eval_batch_size = 360
  c.train.num_epochs = 40
  c.train.log_every = 22
  c.train.eval_every = 220
  c.train.checkpoint_every = 220
  c.optim.name = "adamw"
  c.optim.lr = 3e-3
  c.optim.weight_decay = 0.0
  c.optim.schedule = "cosine"
  return c
