"""DINOv2 self-supervised pretraining of ViT-S/14 (:model=vitb14, :model=vitl14) on ImageNet-1k.

Recipe: the DINOv2 release's from-scratch ImageNet-1k training
(github.com/facebookresearch/dinov2, dinov2/configs/ssl_default_config.yaml
with configs/train/vitl16_short.yaml; Oquab et al. 2023): student and EMA
teacher ViTs with layer scale 1e-5, a DINO head 2048-2048-256 with 65,536
weight-normalised prototypes shared with iBOT; losses DINO (cross-entropy
over all student crop / other teacher global crop pairs) + iBOT (masked
patches, half of the global crops masked with ratio stratified in [0.1, 0.5],
block masks) + 0.1 KoLeo; teacher softmax centering with momentum 0.9
(`--config.ssl.centering=sinkhorn_knopp` for 3 Sinkhorn-Knopp iterations);
student temperature 0.1, teacher 0.04 -> 0.07 over 30 epochs; EMA momentum
0.992 -> 1 (cosine); AdamW (0.9, 0.999), base lr 0.004 at batch 1024 scaled
by sqrt(batch / 1024), 10 warmup epochs then cosine to 1e-6, weight decay
cosine 0.04 -> 0.4 (not on biases, norms, layer scales), layer-wise lr decay
0.9, patch embedding lr x 0.2, gradient clipping at 3.0 per module, last
layer frozen for the first epoch, 100 epochs; multi-crop 2 x 224 (scale
0.32-1) + 8 local crops (scale 0.05-0.32), colour jitter, grayscale, blur,
solarisation as vision/data/multicrop.py describes; position embeddings
interpolated with the release's offset 0.1 for the local crops.
`python eval.py` on the workdir reports the teacher's kNN (k = 10, 20, 100,
200, T = 0.07) and linear-probe top-1 on the validation split.

Departures from the release:
- The released vits14/vitb14/vitl14 weights were distilled from ViT-g/14
  trained on LVD-142M (private); the release trains only ViT-L (patch 16)
  and ViT-g from scratch on ImageNet-1k. Here each size is trained from
  scratch with that recipe at patch 14 (local crops 98 px = 7 x 7 patches
  instead of 96). Drop path (uniform over blocks, as drop_path_uniform) is
  0.3 for vitl14 as the release; 0.1 for vits14/vitb14 (our choice: the
  release gives no from-scratch value for them).
- Epoch length is the dataset size / batch (1,251 steps at batch 1024), not
  the release's fixed OFFICIAL_EPOCH_LENGTH of 1,250 iterations.
- Default batch 1024 (the release: 64 per GPU x its GPU count, 2048 for
  vitl16_short on 32 GPUs); lr follows the sqrt rule for any :batch=.
- bfloat16 compute with float32 parameters (the release: fp16 with a grad
  scaler under FSDP); --config.train.fsdp=True shards like FSDP.
- Random-resized crops use TensorFlow's box sampler and antialiased bicubic
  resize (torchvision samples the box slightly differently, PIL resamples);
  crops are rounded to uint8 once, after the colour operations (PIL rounds
  after each), and normalised on the device.
- iBOT masks and KoLeo work per device batch as the release does per GPU;
  the DINO center and Sinkhorn-Knopp are over the global batch, as there.
- The evaluation transform is the release's: bicubic resize 256, centre crop 224.
- Linear probes train on features computed once with the evaluation
  transform (the release re-augments every epoch), selected on 10% of the
  train split held out (the release selects on the validation split it
  reports; --config.ssl.probe_val_fraction=0 does that).
Variants: :model=vitb14, :model=vitl14, :batch=2048, :epochs=300, :reg=True (4 registers).
"""
import math

from vision.errors import UserError
from vision.train.config import default_config, imagenet_data, parse_arg

MODELS = {"vits14": ("vit_small_patch14_dinov2", 0.1), "vitb14": ("vit_base_patch14_dinov2", 0.1),
          "vitl14": ("vit_large_patch14_dinov2", 0.3)}


def get_config(arg=None):
  a = parse_arg(arg, model="vits14", batch=1024, epochs=100.0, reg=False, dtype="bfloat16")
  if a.model not in MODELS:
    raise UserError(f"model={a.model!r} is not one of {sorted(MODELS)}")
  name, drop_path = MODELS[a.model]
  c = imagenet_data(default_config())
  c.task = "dinov2"
  c.model.name = name.replace("patch14_", "patch14_reg4_") if a.reg else name
  c.model.dtype = a.dtype
  c.model.kwargs.img_size = 224  # position embeddings for 16 x 16 patches (the registry's default is 518 px)
  c.model.kwargs.drop_path_rate = drop_path
  c.model.kwargs.drop_path_uniform = True
  c.model.kwargs.interpolate_offset = 0.1
  c.train.batch_size = a.batch
  c.train.eval_batch_size = 512
  c.train.num_epochs = a.epochs
  c.train.checkpoint_every = -1  # once per epoch
  c.train.eval_every = -1  # kNN at the end only; eval.py on any checkpoint for more
  c.optim.name = "adamw"
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.lr = 0.004 * math.sqrt(a.batch / 1024)  # base_lr x sqrt(batch / 1024)
  c.optim.end_lr_factor = 1e-6 / c.optim.lr  # min_lr 1e-6
  c.optim.warmup_epochs = 10.0
  c.optim.weight_decay = 0.04  # cosine to ssl.weight_decay_end = 0.4
  c.data.flip = True
  c.data.interpolation = "bicubic"  # the kNN / linear evaluation transform (the crops are always bicubic)
  c.data.shuffle_buffer = 16 * 1024
  return c
