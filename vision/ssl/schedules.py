"""DINOv2's per-step schedules: learning rate, weight decay, teacher EMA momentum, teacher temperature.

All follow the release's CosineScheduler (dinov2/utils/utils.py) step for step:
`warmup` steps of np.linspace(start, base, warmup) (its last value is `base`),
then base -> final along a half cosine over the remaining steps, evaluated at
i / (number of remaining steps), so the last scheduled step is just short of
`final`; from `total` steps on, `final`. Functions of a traced step, for jit.
"""
import dataclasses
import math
from typing import Callable

import jax.numpy as jnp


def cosine_schedule(base, final, total_steps, warmup_steps=0, warmup_start=0.0):
  """The release's CosineScheduler(base, final, total, warmup, start_warmup) as a function of step."""
  total_steps, warmup_steps = int(total_steps), int(min(warmup_steps, total_steps))
  cosine_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps > 1:
      warm = warmup_start + (base - warmup_start) * step / (warmup_steps - 1)
    else:  # np.linspace(start, base, 1) == [start]
      warm = jnp.full_like(step, warmup_start)
    i = step - warmup_steps
    cos = final + 0.5 * (base - final) * (1.0 + jnp.cos(math.pi * i / cosine_steps))
    value = jnp.where(step < warmup_steps, warm, cos)
    return jnp.where(step >= total_steps, final, value)

  return schedule


@dataclasses.dataclass(frozen=True)
class Schedules:
  lr: Callable  # peak config.optim.lr (already scaled for the batch size), warmup from 0, cosine to min
  weight_decay: Callable  # cosine from config.optim.weight_decay to ssl.weight_decay_end
  momentum: Callable  # teacher EMA: cosine from ssl.momentum_teacher to ssl.final_momentum_teacher
  teacher_temp: Callable  # linear warmup ssl.warmup_teacher_temp -> ssl.teacher_temp, then constant
  freeze_last_layer_steps: int  # the prototypes' learning rate is 0 before this step


def make_schedules(config, steps_per_epoch: int, total_steps: int) -> Schedules:
  o, s = config.optim, config.ssl
  epochs = lambda e: int(round(e * steps_per_epoch))
  temp_steps = epochs(s.warmup_teacher_temp_epochs)
  return Schedules(
      lr=cosine_schedule(o.lr, o.lr * o.end_lr_factor, total_steps, epochs(o.warmup_epochs), 0.0),
      weight_decay=cosine_schedule(o.weight_decay, s.weight_decay_end, total_steps),
      momentum=cosine_schedule(s.momentum_teacher, s.final_momentum_teacher, total_steps),
      # The release's teacher_temp scheduler: total = warmup = warmup_teacher_temp_epochs, then final.
      teacher_temp=cosine_schedule(s.teacher_temp, s.teacher_temp, temp_steps, temp_steps, s.warmup_teacher_temp),
      freeze_last_layer_steps=epochs(s.freeze_last_layer_epochs))
