"""The config schema. Experiment files start from `default_config()` and change values.

The returned ConfigDict is locked: assigning a key that is not here (a typo in a
config file, or `--config.optim.learnig_rate=...` on the command line) fails.
`model.kwargs` is the one open mapping; create_model checks it against the model.
"""
import math

import ml_collections

from vision.errors import UserError, close_matches

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

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
  c.data.crop_pct = 0.875
  c.data.mean = IMAGENET_MEAN  # in [0, 1] units
  c.data.std = IMAGENET_STD
  c.data.shuffle_buffer = 10_000
  c.data.cache = False  # keep decoded training images in memory (small datasets: digits, CIFAR)
  c.data.num_parallel_calls = -1  # -1: tf.data AUTOTUNE
  c.data.prefetch = 2  # batches kept ready on the device

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
  c.train.init_from = ""  # a checkpoint dir to start from (new head if num_classes differs)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"  # 'sgd', 'nesterov', 'adamw', 'rmsprop' (TF-style, as EfficientNet/MobileNet papers)
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
  choices = {"optim.name": ("sgd", "nesterov", "adamw", "rmsprop"),
             "optim.schedule": ("cosine", "step", "exponential", "constant"),
             "data.train_crop": ("inception", "pad_random", "resize"), "data.eval_crop": ("center", "resize"),
             "model.dtype": ("float32", "bfloat16", "float16")}
  for key, allowed in choices.items():
    section, name = key.split(".")
    if config[section][name] not in allowed:
      raise UserError(f"config.{key} = {config[section][name]!r} is not one of {allowed}")
  if config.data.channels not in (1, 3):
    raise UserError(f"config.data.channels = {config.data.channels} must be 1 or 3")


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
