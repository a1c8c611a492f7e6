"""ViT-S (384 wide, 12 blocks, 6 heads) from scratch on CIFAR-10 with 4x4 patches (8x8 = 64 tokens).

Recipe of Lee, Lee & Song 2021 ("Vision Transformer for Small-Size Datasets",
arXiv:2112.13492; defaults of github.com/aanna0701/SPT_LSA_ViT main.py): AdamW,
lr 1e-3 at batch 128, weight decay 0.05, 100 epochs, 10 linear warmup epochs
then cosine, label smoothing 0.1, stochastic depth 0.1, pad-4 random crops and
flips, CIFAR statistics. Their plain ViT (192 wide, 9 blocks) reaches 93.6%
with the augmentations below; this is the same recipe on timm's ViT-S shape
(vit_small_patch16_224 with patch_size=4, img_size=32).
Departures: no AutoAugment (CIFAR policy), CutMix / Mixup (each at p 0.25),
repeated augmentation (x3) or random erasing (0.25) until the recipes issue
lands, so expect lower accuracy; float32 compute by default (dtype=bfloat16
on accelerators).
Variants: --config configs/vit_s16_cifar10.py:batch=256,epochs=200
"""
from vision.train.config import cifar_data, default_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="vit_small_patch16_224", batch=128, epochs=100.0, dtype="float32")
  c = cifar_data(default_config(), "cifar10")
  c.model.name, c.model.dtype = a.model, a.dtype
  c.model.kwargs.patch_size = 4
  c.model.kwargs.img_size = 32
  c.model.kwargs.drop_path_rate = 0.1
  c.train.batch_size = a.batch
  c.train.num_epochs = a.epochs
  c.train.label_smoothing = 0.1
  c.optim.name = "adamw"
  c.optim.lr = 1e-3 * a.batch / 128
  c.optim.weight_decay = 0.05
  c.optim.warmup_epochs, c.optim.schedule = 10.0, "cosine"
  return c
