"""ViT-B/16 on ImageNet-1k from scratch, DeiT recipe (:recipe=torchvision for torchvision's).

recipe=deit (default), Touvron et al. 2021 ("Training data-efficient image
transformers", Table 9 / github.com/facebookresearch/deit main.py): AdamW
(0.9, 0.999), lr 5e-4 x batch/512, weight decay 0.05, 300 epochs, 5 linear
warmup epochs then cosine to 1e-5, label smoothing 0.1, stochastic depth 0.1,
batch 1024, 224px bicubic inception crops, eval bicubic resize 256 / center crop
224; DeiT-B reaches 81.8% top-1 with the augmentations below.
recipe=torchvision (github.com/pytorch/vision references/classification, vit_b_16,
81.1%): lr 3e-3 at batch 4096, weight decay 0.3, 30 warmup epochs then cosine,
label smoothing 0.11, gradient clipping at global norm 1, no stochastic depth,
bilinear crops and eval resize 256 / crop 224 (the vit_b_16 weights' transforms).
Both: bf16 compute (float32 params and optimizer), gradient clipping at norm 1
(the DeiT repo does not clip; with AdamW and bf16 it only guards against spikes).
DeiT's augmentation and regularisation: RandAugment rand-m9-mstd0.5 (n=2),
random erasing 0.25, Mixup 0.8 / CutMix 1.0 (switch 0.5), repeated augmentation
x3, warmup from 1e-6, weight EMA 0.99996 (DeiT's main.py default).
torchvision's (`--auto-augment ra --mixup-alpha 0.2 --cutmix-alpha 1.0 --ra-sampler
--model-ema --lr-warmup-decay 0.033`): RandAugment (n=2, m=9), Mixup 0.2 / CutMix
1.0, repeated augmentation x3, warmup from 0.033 x lr, model EMA 0.99998 every 32
steps (0.99126 per update at batch 4096 / 300 epochs, copied during warmup), and
weight decay on every parameter (no --norm-weight-decay / --transformer-embedding-decay).
Departures: bf16 instead of fp16 AMP; RandAugment's ops are torchvision's (tested),
DeiT's timm RandAugment differs in a few ops' magnitude ranges; repeated copies are
consecutive in the stream (vision/data/pipeline.py).
DeiT's weight decay skips biases, LayerNorm parameters, pos_embed and cls_token
(timm's no_weight_decay(); vision/train/optim.py decay_mask).
Variants: --config configs/vit_b16_imagenet.py:model=vit_small_patch16_224,batch=512
"""
from vision.errors import UserError
from vision.train.config import default_config, imagenet_data, parse_arg

RECIPES = {
    # lr and the batch it is quoted at, weight decay, warmup epochs, label smoothing, drop path, ...
    "deit": dict(lr=5e-4, lr_batch=512, wd=0.05, warmup=5.0, smoothing=0.1, drop_path=0.1, end_lr=1e-5,
                 augment="randaugment(n=2,m=9,mstd=0.5)+erasing(p=0.25)", mixup=0.8, cutmix=1.0, repeats=3,
                 warmup_init=None, ema=(0.99996, 1), decay_all=False, interpolation="bicubic"),
    "torchvision": dict(lr=3e-3, lr_batch=4096, wd=0.3, warmup=30.0, smoothing=0.11, drop_path=0.0, end_lr=0.0,
                        augment="randaugment(n=2,m=9)", mixup=0.2, cutmix=1.0, repeats=3, warmup_init=0.033,
                        ema=(0.99998, 32), decay_all=True, interpolation="bilinear"),
}


def get_config(arg=None):
  a = parse_arg(arg, model="vit_base_patch16_224", recipe="deit", batch=1024, epochs=300.0, dtype="bfloat16")
  if a.recipe not in RECIPES:
    raise UserError(f"recipe={a.recipe!r} is not one of {sorted(RECIPES)}")
  r = RECIPES[a.recipe]
  c = imagenet_data(default_config())
  c.model.name, c.model.dtype = a.model, a.dtype
  c.model.kwargs.drop_path_rate = r["drop_path"]
  c.train.batch_size = c.train.eval_batch_size = a.batch
  c.train.num_epochs = a.epochs
  c.train.label_smoothing = r["smoothing"]
  c.optim.name, c.optim.b1, c.optim.b2 = "adamw", 0.9, 0.999
  c.optim.lr = r["lr"] * a.batch / r["lr_batch"]
  c.optim.weight_decay = r["wd"]
  c.optim.warmup_epochs, c.optim.schedule = r["warmup"], "cosine"
  c.optim.end_lr_factor = r["end_lr"] / r["lr"]
  c.optim.grad_clip_norm = 1.0
  c.optim.decay_norm_and_bias = r["decay_all"]
  c.optim.warmup_init_factor = r["warmup_init"] if r["warmup_init"] is not None else 1e-6 / c.optim.lr
  c.data.augment, c.data.interpolation = r["augment"], r["interpolation"]
  c.data.repeated_augment = r["repeats"]
  c.train.mixup_alpha, c.train.cutmix_alpha = r["mixup"], r["cutmix"]
  decay, every = r["ema"]
  c.train.ema_every = every
  if every == 1:  # DeiT: timm's ModelEma, every step
    c.train.ema_decay = decay
  else:  # torchvision: adjusted to batch and epochs, reset during warmup
    c.train.ema_decay = 1.0 - min(1.0, (1.0 - decay) * a.batch * every / a.epochs)
    c.train.ema_warmup_epochs = r["warmup"]
  return c
