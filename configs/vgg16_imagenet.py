"""VGG-16 on ImageNet-1k (model=vgg16_bn etc. for the other depths).

torchvision's reference recipe for its vgg weights (vgg16 71.6% top-1): SGD
momentum 0.9, lr 0.01 at batch 256, weight decay 1e-4, 90 epochs, lr x0.1 every
30 epochs, 224 inception crops + flip; eval resize 256 / crop 224.
The paper (Simonyan & Zisserman 2015) used weight decay 5e-4, lr divided by 10
on plateaus (74 epochs) and scale jittering; set --config.optim.weight_decay=5e-4
for that. Dropout 0.5 on the first two fully connected layers is in the model.
"""
from vision.train.config import default_config, imagenet_data, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="vgg16", batch=256, dtype="bfloat16")
  c = imagenet_data(default_config())
  c.model.name, c.model.dtype = a.model, a.dtype
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = 90.0
  c.optim.name, c.optim.momentum, c.optim.weight_decay = "sgd", 0.9, 1e-4
  c.optim.lr = 0.01 * a.batch / 256
  c.optim.schedule, c.optim.step_epochs = "step", (30.0, 60.0)
  return c
