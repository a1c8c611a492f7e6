"""ResNet-50 (v1.5) on ImageNet-1k: the standard 90-epoch recipe.

He et al. 2016 with Goyal et al. 2017 ("Accurate, Large Minibatch SGD") scaling,
as torchvision's reference recipe: SGD momentum 0.9, lr 0.1 x batch/256,
weight decay 1e-4 not on BN parameters or biases, 90 epochs, 5 warmup epochs
then cosine (or step decay x0.1 at 30/60/80 with schedule=step), optional label
smoothing, 224 inception crops + flips, eval at resize 256 / center crop 224.
Expected: about 76-77% top-1 (76.1% torchvision step recipe).

Needs imagenet2012 prepared in a tfds data_dir (see the README).
Variants: --config configs/resnet50_imagenet.py:batch=1024,schedule=step,smoothing=0.1,model=resnet101
"""
from vision.train.config import default_config, imagenet_data, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=256, schedule="cosine", smoothing=0.0, epochs=90.0, model="resnet50",
                dtype="bfloat16", warmup=5.0)
  c = default_config()
  c.model.name = a.model
  c.model.dtype = a.dtype
  imagenet_data(c)
  c.train.batch_size = a.batch
  c.train.eval_batch_size = a.batch
  c.train.num_epochs = a.epochs
  c.train.label_smoothing = a.smoothing
  c.optim.name = "sgd"
  c.optim.lr = 0.1 * a.batch / 256
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = a.schedule
  c.optim.warmup_epochs = a.warmup
  c.optim.step_epochs = (30.0, 60.0, 80.0)
  return c
