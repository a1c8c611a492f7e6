"""Convert a PyTorch checkpoint into an Orbax checkpoint that train.py and eval.py read.

    python -m vision.weights.convert --source timm:resnet50 --checkpoint resnet50.safetensors --out runs/r50_timm
    python -m vision.weights.convert --source dinov2:dinov2_vits14 --checkpoint dinov2_vits14_pretrain.pth \\
        --out runs/dinov2_s14 --image-size 224

--out becomes a workdir holding checkpoints/0 ({'params', 'batch_stats'} and
the model's name and number of classes). Then:

    python eval.py --config configs/resnet50_imagenet.py --workdir runs/r50_timm        # evaluate it
    python train.py --config ... --config.train.init_from=runs/r50_timm --workdir W      # fine-tune from it

(a different number of classes gets a new head). `.safetensors` needs no torch;
`.pth`/`.pt`/`.bin` need torch. --image-size resamples a ViT's position
embeddings (e.g. DINOv2's 518px grid to 224px).
"""
import argparse
import os
import sys

import jax

from vision.errors import UserError
from vision.models import num_params, registry
from vision.train import checkpoint as ckpt_lib
from vision.weights import load, mapping


def convert_checkpoint(source_spec: str, checkpoint: str, out: str, image_size: int | None = None) -> dict:
  """Writes `out`/checkpoints/0 and returns its meta (model, num_classes, model_kwargs, source)."""
  source = mapping.parse_source(source_spec)
  if os.path.isdir(os.path.join(out, "checkpoints")) and os.listdir(os.path.join(out, "checkpoints")):
    raise UserError(f"{out} already holds checkpoints; choose another --out (nothing was overwritten)")
  state_dict = load.load_state_dict(checkpoint)
  kwargs = mapping.model_kwargs(source, state_dict, image_size)
  abstract = registry.abstract_variables(source.model, image_size, **kwargs)
  variables = mapping.convert(state_dict, source, abstract)
  variables.setdefault("batch_stats", {})
  info = registry.model_info(source.model)
  meta = {"model": source.model, "num_classes": kwargs["num_classes"], "class_names": [],
          "image_size": image_size or info.default_image_size, "channels": info.in_channels,
          "model_kwargs": {k: v for k, v in kwargs.items() if k != "num_classes"},
          "source": f"{source.library}:{source.name}", "source_file": os.path.abspath(checkpoint)}
  ckpt = ckpt_lib.Checkpointer(out, keep=1, best_metric="", async_save=False)
  ckpt.save(0, jax.tree.map(jax.numpy.asarray, variables), meta)
  ckpt.wait()
  ckpt.close()
  meta["num_params"] = num_params(variables["params"])
  return meta


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m vision.weights.convert", description=__doc__.splitlines()[0])
  p.add_argument("--source", required=True, help="LIBRARY:MODEL, e.g. timm:resnet50, torchvision:vit_b_16, "
                 "dinov2:dinov2_vits14_reg")
  p.add_argument("--checkpoint", required=True, help=".safetensors, .pth, .pt or .bin state_dict")
  p.add_argument("--out", required=True, help="output workdir (gets checkpoints/0)")
  p.add_argument("--image-size", type=int, help="ViT only: position-embedding grid for this input size")
  args = p.parse_args(argv)
  try:
    meta = convert_checkpoint(args.source, args.checkpoint, args.out, args.image_size)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {os.path.join(args.out, 'checkpoints', '0')}: {meta['model']} from {meta['source']}, "
        f"{meta['num_params']:,} parameters, {meta['num_classes']} classes"
        + (f", model kwargs {meta['model_kwargs']}" if any(meta["model_kwargs"].values()) else ""))
  print(f"evaluate: python eval.py --config <config with model.name={meta['model']}> --workdir {args.out}")
  print(f"fine-tune: python train.py --config <config> --config.train.init_from={args.out} --workdir <new dir>")


if __name__ == "__main__":
  main()
