"""DINOv2 pretraining of a small ViT on the embedded digits: the learning-signal check (a few CPU minutes).

The DINOv2 recipe (configs/dinov2_vits14_imagenet.py, vision/ssl) at toy
scale: DINO + iBOT + KoLeo losses, EMA teacher, multi-crop, iBOT masks, the
release's schedules, layer-wise decay, clipping and frozen last layer. The
vit_small_patch14_dinov2 architecture (layer scale, mask token) narrowed to
width 64, depth 3, 4 heads, patch 4 on 24 px (the 8 x 8 digits upscaled, RGB).
Departures, all hyperparameters:
- layer scale initialised at 1.0 (the release: 1e-5). With 1e-5 the
  class token of a freshly initialised network hardly depends on its input
  (std over images ~5e-6), its kNN top-1 is at chance (~0.13) and the DINO
  head output is the same for every image; the teacher then sits at the
  uniform fixed point (entropy = log K) and nothing is learnt in a few
  hundred steps;
- 2 global crops of 24 px, scale 0.7-1, and 4 local crops of 16 px, scale
  0.4-0.7 (an 8 x 8 digit has no detail to spare), no flips (digits are not
  mirror-symmetric), no solarisation;
- teacher targets by Sinkhorn-Knopp at teacher temperature 0.01 throughout
  (softmax centering at 0.04-0.07 stays at the uniform teacher on this data,
  and a low temperature with centering collapses onto one prototype),
  iBOT on its own head (ssl.ibot_separate_head, a release option);
- heads 256-256-64 with 256 prototypes each; batch 64, 30 epochs (660
  steps), lr 2e-3 (no sqrt scaling at this batch), warmup 1 epoch, weight
  decay 0.04 constant, EMA momentum 0.99 -> 1.

Measured 2026-12-01 (`python train.py --config configs/dinov2_digits.py
--workdir W` on the 2-core CPU, nothing else running: 7 min 38 s wall with the
7 kNN evaluations; uint8 crops and evaluation images, both normalised on the
device; evaluation images resized as PIL does), teacher kNN top-1 on the 360
test digits:

| step | k=10 | k=20 | k=100 | k=200 | eval feature std |
|---|---|---|---|---|---|
| 0 (random init) | 0.689 | 0.633 | 0.519 | 0.417 | 0.012 |
| 220 | 0.756 | 0.739 | 0.708 | 0.703 | 0.101 |
| 440 | 0.831 | 0.831 | 0.825 | 0.825 | 0.110 |
| 660 | 0.850 | 0.856 | 0.842 | 0.839 | 0.110 |

No collapse: at the end teacher entropy 2.46 (of log 256 = 5.55) with
marginal entropy 5.31 (the batch still uses the prototypes evenly), teacher
feature std 0.117. `python eval.py` on the same workdir: linear probe top-1
0.872 (cls1, lr 1; the same probe on the random-init network: 0.672, measured
before the PIL resize). The table of 2026-11-25 (k=20 0.853 at the end, probe
0.878) is not what that day's last commit gives: dc34fc3, rerun on 2026-12-01,
gives exactly this table's step-110 and step-220 figures.
A random network is a fair kNN baseline here (raw pixels: 0.97), so the gain
is the network's own. tests/test_ssl_eval.py runs a shorter version.
"""
from vision.train.config import default_config


def get_config(arg=None):
  del arg
  c = default_config()
  c.task = "dinov2"
  c.model.name = "vit_small_patch14_dinov2"
  c.model.kwargs.update(img_size=24, patch_size=4, embed_dim=64, depth=3, num_heads=4, init_values=1.0)
  c.data.name = "digits"
  c.data.channels = 3
  c.data.image_size = 24  # evaluation: the digits resized to 24 px
  c.data.eval_crop = "resize"
  c.data.flip = False
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.5, 0.5, 0.5)
  c.data.shuffle_buffer = 2048
  c.data.cache = True
  s = c.ssl
  s.global_crop_size, s.global_crop_scale = 24, (0.7, 1.0)
  s.local_crops, s.local_crop_size, s.local_crop_scale = 4, 16, (0.4, 0.7)
  s.solarize_prob = 0.0
  s.prototypes, s.head_hidden_dim, s.head_bottleneck_dim = 256, 256, 64
  s.ibot_separate_head, s.ibot_prototypes = True, 256
  s.centering = "sinkhorn_knopp"
  s.warmup_teacher_temp, s.teacher_temp = 0.01, 0.01
  s.momentum_teacher = 0.99
  s.weight_decay_end = 0.04
  s.knn_k = (10, 20, 100, 200)
  s.probe_lrs = (1e-3, 1e-2, 0.1, 1.0)
  s.probe_epochs, s.probe_batch_size = 100.0, 256
  c.train.batch_size = 64
  c.train.eval_batch_size = 360
  c.train.num_epochs = 30
  c.train.eval_every = 110  # step 0 (random init), then every 5 epochs
  c.train.log_every = 22
  c.train.checkpoint_every = 220
  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.end_lr_factor = 1e-3
  c.optim.warmup_epochs = 1.0
  c.optim.weight_decay = 0.04
  return c
