"""Frozen features of any registered backbone, for kNN and linear probes.

ViTs with a class token give DINOv2's evaluation features: the normed class
token of each of the last `n_last_blocks` blocks ('cls', [B, n, D]; the last
one is what kNN uses) and the mean of the last block's patch tokens
('patch_mean', [B, D]). Every other model (a supervised ResNet, ConvNeXt,
Swin, an average-pooled ViT) gives its pooled pre-logits ('pooled', [B, D]):
build it with num_classes=0; the variables may still hold a head, it is
ignored.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vision.train.steps import normalize_images


def is_token_vit(model) -> bool:
  return hasattr(model, "get_intermediate_layers") and getattr(model, "class_token", False)


def feature_fn(model, n_last_blocks: int = 4, normalize=None):
  """(variables, images) -> dict of float32 feature arrays, eval mode. normalize: (mean, std) for uint8 images
  (config.data.uint8_batches), as the train step's."""
  if is_token_vit(model):
    n = min(n_last_blocks, model.depth)

    def vit_features(variables, images):
      images = normalize_images(images, *(normalize or (None, None)))
      outs = model.apply(variables, images, n, method="get_intermediate_layers")
      prefix = model.num_prefix_tokens
      return {"cls": jnp.stack([o[:, 0] for o in outs], axis=1).astype(jnp.float32),
              "patch_mean": jnp.mean(outs[-1][:, prefix:].astype(jnp.float32), axis=1)}
    return vit_features

  def pooled(variables, images):
    images = normalize_images(images, *(normalize or (None, None)))
    return {"pooled": model.apply(variables, images, train=False).astype(jnp.float32)}
  return pooled


def knn_features(features: dict):
  """The single vector per image that kNN compares: the last class token, or the pooled features."""
  return features["cls"][:, -1] if "cls" in features else features["pooled"]


def extract(fn, variables, batches, num_batches: int, variables_sharding=None, batch_sharding=None):
  """Runs `fn` over padded eval batches ({'image', 'label', 'mask'}); host numpy (features, labels), padding dropped."""
  step = jax.jit(lambda v, b: (fn(v, b["image"]), b["label"], b["mask"]),
                 **({} if batch_sharding is None else {"in_shardings": (variables_sharding, batch_sharding)}))
  chunks, labels = [], []
  for _, batch in zip(range(num_batches), batches):
    out, label, mask = _to_host(step(variables, batch))
    keep = np.asarray(mask) > 0
    chunks.append({k: np.asarray(v)[keep] for k, v in out.items()})
    labels.append(np.asarray(label)[keep])
  features = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  return features, np.concatenate(labels)


def _to_host(tree):
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)
