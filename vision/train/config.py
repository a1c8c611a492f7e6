"""The config schema. Experiment files start from `default_config()` and change values.

The returned ConfigDict is locked: assigning a key that is not here (a typo in a
config file, or `--config.optim.learnig_rate=...` on the command line) fails.
`model.kwargs` is the one open mapping; create_model checks it against the model.
"""
import math
import re

import ml_collections

from vision.errors import UserError, close_matches

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classification"  # 'classification' (supervised) or 'dinov2' (self-supervised, vision/ssl; uses c.ssl)

  c.model = ml_collections.ConfigDict()
  c.model.name = ""
  c.model.kwargs = ml_collections.ConfigDict()  # passed to create_model (drop_path_rate=..., stem=...)
  c.model.dtype = "float32"  # compute dtype: 'bfloat16' on accelerators; params stay float32
  c.model.aux_loss_weight = 0.3  # weight of sown 'aux_logits' losses (GoogLeNet), training only

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # a tfds name, or 'imagefolder:/path' (class-per-folder, one subfolder per split)
  c.data.data_dir = ""  # tfds data_dir ('' = tfds default, $TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.data.manual_dir = ""  # where manually downloaded archives lie (ImageNet)
  c.data.download = True  # prepare the tfds dataset if it is not there
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 224
  c.data.channels = 3  # images are converted to this many channels (1 or 3)
  c.data.train_crop = "inception"  # 'inception' (random-resized), 'pad_random' (CIFAR), 'resize'
  c.data.crop_scale = (0.08, 1.0)  # area range of the inception crop
  c.data.crop_ratio = (3 / 4, 4 / 3)
  c.data.pad = 4  # padding of 'pad_random'
  c.data.flip = True
  c.data.augment = ""  # e.g. 'randaugment(n=2,m=9,mstd=0.5)+erasing(p=0.25)' (vision/data/augment.py)
  c.data.repeated_augment = 1  # > 1: each image appears this many times per epoch, differently augmented
  c.data.eval_crop = "center"  # 'center' (resize to image_size / crop_pct, center crop) or 'resize'
  c.data.crop_pct = 0.875  # the shorter side is resized to floor(image_size / crop_pct): 0.875 -> 256 for 224
  # PIL's filter of every resize, 'bilinear' or 'bicubic' (timm's ViT/DeiT/ConvNeXt/DINOv2 and torchvision's
  # Swin/EfficientNet weights were trained and evaluated with bicubic). Evaluation resizes as torchvision's
  # Resize + CenterCrop on PIL images do, to within 1 level (vision/data/preprocess.py pil_resize).
  c.data.interpolation = "bilinear"
  # FixRes (Touvron et al. 2019): evaluate at another size than the train crops (0: data.image_size). The eval
  # resize is eval_image_size / crop_pct (torchvision's v2 recipe: 176 train, resize 232, crop 224).
  c.data.eval_image_size = 0
  c.data.classes = ()  # keep only these label ids (relabelled 0..n-1 in this order); () keeps every class
  c.data.mean = IMAGENET_MEAN  # in [0, 1] units
  c.data.std = IMAGENET_STD
  c.data.shuffle_buffer = 10_000
  c.data.cache = False  # keep decoded training images in memory (small datasets: digits, CIFAR)
  # The train split is read as this many shards, each shuffled on its own, batch_size / train_shards examples
  # of each per step; every process reads train_shards / process_count of them. 0: one per process. Fixed (to
  # a multiple of the process count), the batches do not depend on the number of processes.
  c.data.train_shards = 0
  c.data.num_parallel_calls = -1  # -1: tf.data AUTOTUNE
  c.data.prefetch = 2  # batches kept ready on the device
  # Train and eval batches leave the host as uint8 and are normalised inside the jitted steps: a quarter of the
  # bytes to copy and move, no float work on the host (BENCHMARKS.md). Random erasing's rectangles are then drawn
  # on the host and erased by the step. False: float32 batches, normalised (and erased) on the host.
  c.data.uint8_batches = True

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256  # global, per optimizer step
  c.train.eval_batch_size = 256
  c.train.num_epochs = 90.0
  c.train.num_steps = -1  # > 0 overrides num_epochs
  c.train.grad_accum_steps = 1  # the batch is split into this many micro-batches
  c.train.label_smoothing = 0.0
  c.train.log_every = 50  # steps between metric fetches (the only host round trip)
  c.train.eval_every = -1  # steps; -1: once per epoch
  c.train.checkpoint_every = -1  # steps; -1: once per epoch
  c.train.keep_checkpoints = 3
  c.train.best_metric = "top1"  # '' disables the best-checkpoint copy
  c.train.async_checkpointing = True
  c.train.fsdp = False  # shard params and optimizer state over the data axis
  c.train.fsdp_min_size = 2**18  # leaves smaller than this stay replicated under FSDP
  c.train.skip_nonfinite = False  # False: a non-finite loss stops the run; True: skip such steps and count them
  c.train.init_from = ""  # a checkpoint dir to start from (new head if num_classes differs)
  c.train.init_new_head = False  # with init_from: a fresh classifier even when the number of classes matches
  # Parameters whose path ('layer4_1/conv2/kernel', 'blocks_3/attn/qkv/kernel') matches this regex are not
  # trained (no update, no weight decay, no optimizer state) and their BatchNorm statistics stay as they are.
  c.train.freeze = ""
  # On-device Mixup / CutMix (vision/data/mixing.py): one lam ~ Beta(alpha, alpha) per batch; with both on,
  # CutMix with probability mix_switch_prob; the batch is mixed with probability mix_prob. 0 alphas: off.
  c.train.mixup_alpha = 0.0
  c.train.cutmix_alpha = 0.0
  c.train.mix_switch_prob = 0.5
  c.train.mix_prob = 1.0
  # Model EMA of params and BatchNorm statistics, evaluated alongside the raw weights: every ema_every steps
  # ema = decay x ema + (1 - decay) x params; before ema_warmup_epochs it copies the params (torchvision).
  c.train.ema_decay = 0.0  # 0: no EMA
  c.train.ema_every = 1
  c.train.ema_warmup_epochs = 0.0

  c.optim = ml_collections.ConfigDict()
  # 'sgd', 'nesterov', 'adamw', 'rmsprop' (TF-style, as EfficientNet/MobileNet papers), and for large batches
  # 'lars' (You et al. 2017; momentum, trust ratio not on biases/norms) and 'lamb' (You et al. 2020)
  c.optim.name = "sgd"
  c.optim.lr = 0.1  # peak learning rate (already scaled for the batch size)
  c.optim.momentum = 0.9
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8  # adamw; rmsprop (inside the square root, as TF)
  c.optim.rms_decay = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.decay_norm_and_bias = False  # False: no decay on biases, norms, tokens, pos. embeddings (optim.py)
  c.optim.grad_clip_norm = 0.0  # 0 disables global-norm clipping
  c.optim.schedule = "cosine"  # 'cosine', 'step', 'exponential', 'constant'
  c.optim.warmup_epochs = 0.0
  c.optim.step_epochs = (30.0, 60.0, 80.0)  # 'step' schedule: decay points
  c.optim.step_factor = 0.1
  c.optim.decay_epochs = 1.0  # 'exponential': lr x decay_rate every decay_epochs (staircase)
  c.optim.decay_rate = 0.97
  c.optim.end_lr_factor = 0.0  # cosine ends at lr * end_lr_factor
  c.optim.warmup_init_factor = 0.0  # warmup starts at lr * this (torchvision's --lr-warmup-decay)
  c.optim.trust_coefficient = 0.001  # lars
  # Per-parameter lr multipliers: layer-wise decay (BEiT/DeiT III fine-tuning: the classifier x 1, the block
  # below x layer_decay, ..., the stem x layer_decay ** (depth + 1); 1 disables), and for everything but the
  # classifier (the layers whose shape depends on num_classes) x backbone_lr_mult (fine-tuning).
  c.optim.layer_decay = 1.0
  c.optim.backbone_lr_mult = 1.0

  # task='dinov2' only. Defaults: the DINOv2 release (dinov2/configs/ssl_default_config.yaml); see
  # configs/dinov2_vits14_imagenet.py for the recipe. optim.lr is the peak lr, optim.weight_decay the start.
  c.ssl = ml_collections.ConfigDict()
  c.ssl.global_crop_size = 224  # 2 global crops; data.image_size is the evaluation size
  c.ssl.global_crop_scale = (0.32, 1.0)
  c.ssl.local_crops = 8
  c.ssl.local_crop_size = 98  # the release: 96 for patch 16; 98 = 7 patches of 14
  c.ssl.local_crop_scale = (0.05, 0.32)
  c.ssl.color_jitter = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
  c.ssl.color_jitter_prob = 0.8
  c.ssl.grayscale_prob = 0.2
  c.ssl.blur_prob = (0.0, 0.9, 0.5)  # global crop 1, global crop 2, local crops: what the release applies
  c.ssl.solarize_prob = 0.2  # global crop 2 only
  c.ssl.mask_probability = 0.5  # fraction of global crops masked for iBOT
  c.ssl.mask_ratio = (0.1, 0.5)  # of the patches, stratified over the masked crops
  c.ssl.prototypes = 65536  # K of the DINO head
  c.ssl.head_hidden_dim = 2048
  c.ssl.head_bottleneck_dim = 256
  c.ssl.head_layers = 3
  c.ssl.ibot_separate_head = False  # False: iBOT uses the DINO head
  c.ssl.ibot_prototypes = 65536  # K of a separate iBOT head (same hidden/bottleneck sizes)
  c.ssl.dino_loss_weight = 1.0
  c.ssl.ibot_loss_weight = 1.0
  c.ssl.koleo_loss_weight = 0.1
  c.ssl.centering = "centering"  # 'centering' (softmax, momentum center) or 'sinkhorn_knopp' (3 iterations)
  c.ssl.center_momentum = 0.9
  c.ssl.student_temp = 0.1
  c.ssl.teacher_temp = 0.07
  c.ssl.warmup_teacher_temp = 0.04
  c.ssl.warmup_teacher_temp_epochs = 30.0
  c.ssl.momentum_teacher = 0.992  # teacher EMA momentum, cosine to final_momentum_teacher
  c.ssl.final_momentum_teacher = 1.0
  c.ssl.weight_decay_end = 0.4  # cosine from optim.weight_decay
  c.ssl.layerwise_decay = 0.9
  c.ssl.patch_embed_lr_mult = 0.2
  c.ssl.clip_grad = 3.0  # per student module (backbone, heads); 0 disables
  c.ssl.freeze_last_layer_epochs = 1.0  # the prototypes are not updated before this
  c.ssl.knn_k = (10, 20, 100, 200)  # evaluation of the frozen teacher: kNN on class tokens
  c.ssl.knn_temperature = 0.07
  c.ssl.probe_lrs = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)  # x batch/256
  c.ssl.probe_epochs = 10.0  # linear probes on frozen features, all trained at once
  c.ssl.probe_batch_size = 1024
  c.ssl.probe_val_fraction = 0.1  # of the train split held out to pick the best probe; 0: pick on the eval split
  c.lock()
  c.model.kwargs.unlock()  # free-form; create_model refuses arguments the model does not take
  return c


def unknown_keys(config, schema=None, prefix=""):
  """Dotted keys present in `config` but not in the schema (model.kwargs excepted)."""
  schema = schema if schema is not None else default_config()
  out = []
  for k, v in config.items():
    path = f"{prefix}{k}"
    if k not in schema:
      out.append((path, list(schema.keys())))
    elif isinstance(v, ml_collections.ConfigDict) and path != "model.kwargs":
      out.extend(unknown_keys(v, schema[k], path + "."))
  return out


def validate(config, num_devices: int, num_processes: int = 1):
  """Refuses values the loop cannot use, with the fix in the message."""
  bad = unknown_keys(config)
  if bad:
    path, siblings = bad[0]
    raise UserError(f"unknown config key {path!r}{close_matches(path.split('.')[-1], siblings)}; "
                    "see vision/train/config.py for the keys")
  if not config.model.name:
    raise UserError("config.model.name is empty; set it to a registered model (vision.models.list_models())")
  t, o = config.train, config.optim
  for key, value in [("train.batch_size", t.batch_size), ("train.eval_batch_size", t.eval_batch_size),
                     ("train.grad_accum_steps", t.grad_accum_steps), ("train.log_every", t.log_every),
                     ("data.image_size", config.data.image_size),
                     ("data.repeated_augment", config.data.repeated_augment)]:
    if not isinstance(value, int) or value <= 0:
      raise UserError(f"config.{key} = {value!r} must be a positive integer")
  if not o.lr > 0 or not math.isfinite(o.lr):
    raise UserError(f"config.optim.lr = {o.lr} must be a positive number")
  if o.weight_decay < 0:
    raise UserError(f"config.optim.weight_decay = {o.weight_decay} must be >= 0")
  if t.num_steps <= 0 and not t.num_epochs > 0:
    raise UserError("set config.train.num_epochs > 0 or config.train.num_steps > 0")
  for key in ("batch_size", "eval_batch_size"):
    if t[key] % num_devices:
      raise UserError(f"config.train.{key} = {t[key]} is not divisible by the {num_devices} devices; "
                      f"use a multiple of {num_devices}")
  if t.batch_size % (t.grad_accum_steps * num_devices):
    raise UserError(f"config.train.batch_size = {t.batch_size} must be divisible by grad_accum_steps x devices "
                    f"= {t.grad_accum_steps * num_devices}")
  if not 0.0 <= t.label_smoothing < 1.0:
    raise UserError(f"config.train.label_smoothing = {t.label_smoothing} must be in [0, 1)")
  choices = {"optim.name": ("sgd", "nesterov", "adamw", "rmsprop", "lars", "lamb"),
             "optim.schedule": ("cosine", "step", "exponential", "constant"),
             "data.train_crop": ("inception", "pad_random", "resize"), "data.eval_crop": ("center", "resize"),
             "data.interpolation": ("bilinear", "bicubic"),
             "model.dtype": ("float32", "bfloat16", "float16")}
  for key, allowed in choices.items():
    section, name = key.split(".")
    if config[section][name] not in allowed:
      raise UserError(f"config.{key} = {config[section][name]!r} is not one of {allowed}")
  if config.data.channels not in (1, 3):
    raise UserError(f"config.data.channels = {config.data.channels} must be 1 or 3")
  _validate_more(config, num_processes)
  _validate_recipes(config)
  if config.task not in ("classification", "dinov2"):
    raise UserError(f"config.task = {config.task!r} is not one of ('classification', 'dinov2')")
  if config.task == "dinov2":
    _validate_ssl(config)


def _validate_recipes(config):
  t, o, d = config.train, config.optim, config.data
  for key in ("mixup_alpha", "cutmix_alpha", "ema_warmup_epochs"):
    if t[key] < 0:
      raise UserError(f"config.train.{key} = {t[key]} must be >= 0")
  for key in ("mix_switch_prob", "mix_prob"):
    if not 0.0 <= t[key] <= 1.0:
      raise UserError(f"config.train.{key} = {t[key]} must be in [0, 1]")
  if not 0.0 <= t.ema_decay < 1.0:
    raise UserError(f"config.train.ema_decay = {t.ema_decay} must be in [0, 1) (0 disables the EMA)")
  if not isinstance(t.ema_every, int) or t.ema_every < 1:
    raise UserError(f"config.train.ema_every = {t.ema_every!r} must be a positive integer")
  if t.freeze:
    try:
      re.compile(t.freeze)
    except re.error as e:
      raise UserError(f"config.train.freeze = {t.freeze!r} is not a regular expression ({e})") from None
  for key in ("layer_decay", "backbone_lr_mult"):
    if not 0.0 <= o[key] <= 1.0:
      raise UserError(f"config.optim.{key} = {o[key]} must be in [0, 1] (1: off)")
  if not 0.0 <= o.warmup_init_factor <= 1.0:
    raise UserError(f"config.optim.warmup_init_factor = {o.warmup_init_factor} must be in [0, 1]")
  if not 0.0 < d.crop_pct <= 1.0:
    raise UserError(f"config.data.crop_pct = {d.crop_pct} must be in (0, 1] (the centre crop's share of the "
                    "resized shorter side, e.g. 0.875: 224 of 256)")
  if not isinstance(d.eval_image_size, int) or d.eval_image_size < 0:
    raise UserError(f"config.data.eval_image_size = {d.eval_image_size!r} must be 0 (= data.image_size) or a size")
  classes = tuple(d.classes)
  if not all(isinstance(c, int) and c >= 0 for c in classes) or len(set(classes)) != len(classes):
    raise UserError(f"config.data.classes = {classes} must be distinct label ids >= 0, e.g. (0, 1, 2, 3, 4)")


def _validate_ssl(config):
  s = config.ssl
  if config.train.grad_accum_steps != 1:
    raise UserError("config.train.grad_accum_steps must be 1 for task='dinov2' (not supported there)")
  if s.centering not in ("centering", "sinkhorn_knopp"):
    raise UserError(f"config.ssl.centering = {s.centering!r} is not one of ('centering', 'sinkhorn_knopp')")
  for key in ("global_crop_size", "local_crop_size", "prototypes", "ibot_prototypes", "head_hidden_dim",
              "head_bottleneck_dim", "head_layers", "probe_batch_size"):
    if not isinstance(s[key], int) or s[key] <= 0:
      raise UserError(f"config.ssl.{key} = {s[key]!r} must be a positive integer")
  if not isinstance(s.local_crops, int) or s.local_crops < 0:
    raise UserError(f"config.ssl.local_crops = {s.local_crops!r} must be an integer >= 0")
  for key in ("student_temp", "teacher_temp", "warmup_teacher_temp", "knn_temperature"):
    if not s[key] > 0:
      raise UserError(f"config.ssl.{key} = {s[key]} must be > 0")
  for key in ("center_momentum", "momentum_teacher", "final_momentum_teacher", "mask_probability",
              "color_jitter_prob", "grayscale_prob", "solarize_prob", "probe_val_fraction"):
    if not 0.0 <= s[key] <= 1.0:
      raise UserError(f"config.ssl.{key} = {s[key]} must be in [0, 1]")
  for key in ("global_crop_scale", "local_crop_scale", "mask_ratio"):
    lo, hi = s[key]
    if not 0.0 <= lo <= hi <= 1.0:
      raise UserError(f"config.ssl.{key} = {tuple(s[key])} must be (low, high) with 0 <= low <= high <= 1")
  if len(s.blur_prob) != 3 or not all(0.0 <= p <= 1.0 for p in s.blur_prob):
    raise UserError(f"config.ssl.blur_prob = {tuple(s.blur_prob)} must be 3 probabilities "
                    "(global crop 1, global crop 2, local crops)")
  if not s.knn_k or min(s.knn_k) <= 0 or not s.probe_lrs or min(s.probe_lrs) <= 0:
    raise UserError("config.ssl.knn_k and config.ssl.probe_lrs must be non-empty and positive")


def _validate_more(config, num_processes):
  d, t = config.data, config.train
  for key in ("mean", "std", "crop_scale", "crop_ratio"):
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in d[key]):
      raise UserError(f"config.data.{key} = {tuple(d[key])} must be a tuple of numbers, e.g. (0.5, 0.5, 0.5)")
  for key in ("mean", "std"):
    if len(d[key]) not in (1, d.channels):  # one value is used for every channel
      raise UserError(f"config.data.{key} = {tuple(d[key])} needs one value per channel "
                      f"(config.data.channels = {d.channels}) or a single value")
  if min(d.std) <= 0:
    raise UserError(f"config.data.std = {tuple(d.std)} must be positive")
  for key, low, high in (("crop_scale", 0.0, 1.0), ("crop_ratio", 0.0, math.inf)):
    v = tuple(d[key])
    if len(v) != 2 or not low < v[0] <= v[1] <= high:
      raise UserError(f"config.data.{key} = {v} must be a pair (min, max) with {low} < min <= max <= {high}")
  shards = d.train_shards or num_processes
  if d.train_shards < 0 or shards % num_processes or t.batch_size % shards:
    raise UserError(f"config.data.train_shards = {d.train_shards} must be 0 (one per process) or a multiple of "
                    f"the {num_processes} processes that divides config.train.batch_size = {t.batch_size}")
  for key in ("keep_checkpoints", "fsdp_min_size"):
    if not isinstance(t[key], int) or t[key] < 1:
      raise UserError(f"config.train.{key} = {t[key]!r} must be a positive integer")
  if not 0.0 < config.optim.b1 < 1.0 or not 0.0 <= config.optim.momentum < 1.0:
    raise UserError("config.optim.b1 must be in (0, 1) and config.optim.momentum in [0, 1)")


def imagenet_data(c, image_size=224, crop_pct=0.875):
  """ImageNet-1k from tfds (imagenet2012): inception crop + flip for training, resize + center crop for eval."""
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = image_size
  c.data.train_crop = "inception"
  c.data.eval_crop = "center"
  c.data.crop_pct = crop_pct
  c.data.shuffle_buffer = 16 * 1024
  c.train.log_every = 100
  return c


CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def cifar_data(c, name="cifar10"):
  """CIFAR-10/100 from tfds: zero-pad 4 + random 32x32 crop + flip, per-channel statistics of the train set."""
  c.data.name = name
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 32
  c.data.train_crop = "pad_random"
  c.data.pad = 4
  c.data.eval_crop = "resize"
  c.data.mean, c.data.std = CIFAR_STATS[name]
  c.data.shuffle_buffer = 50_000
  c.data.cache = True  # 50k uint8 32x32x3 images: 150 MB
  c.train.eval_batch_size = 500
  c.train.log_every = 100
  return c


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """'batch=1024,schedule=step' -> ConfigDict over `defaults`, typed like the defaults.

  Config files use it for their variants: --config configs/x.py:batch=1024
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise UserError(f"unknown config argument {item!r}{close_matches(key, defaults)}; "
                      f"this config takes {', '.join(f'{k}={v}' for k, v in defaults.items())}")
    kind = type(defaults[key])
    try:
      out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    except ValueError:
      raise UserError(f"config argument {key}={value!r} is not of type {kind.__name__}") from None
  return out
