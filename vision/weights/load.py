"""Reading PyTorch checkpoints as {key: numpy array} (floating point as float32).

`.safetensors` is read here without torch: the format is an 8-byte header
length, a JSON header of {key: dtype, shape, data_offsets}, then raw
little-endian bytes. (The `safetensors` package's numpy loader refuses
bfloat16, which many hub checkpoints use, and torch is a multi-GB dependency an
accelerator host should not need.) Pickled `.pth` / `.pt` / `.bin` files need
torch, imported only then, and are loaded with `weights_only=True` so that a
checkpoint cannot run code. Training wrappers are unwrapped: {'state_dict': ...},
{'model': ...}, {'model_ema': ...}, {'teacher': ...} (DINO/DINOv2 training
checkpoints, whose backbone keys start with 'backbone.'), and DDP's 'module.'.
"""
import json
import os
import struct

import ml_dtypes
import numpy as np

from vision.errors import UserError

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}
_WRAPPERS = ("state_dict", "model", "model_ema", "teacher")


def read_safetensors(path) -> dict:
  """{key: numpy array} of a .safetensors file, dtypes as stored (bfloat16 via ml_dtypes)."""
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise UserError(f"{path} is not a safetensors file (shorter than its 8-byte header); re-download it")
    (n,) = struct.unpack("<Q", head)
    try:
      header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, MemoryError, OverflowError):
      raise UserError(f"{path} is not a safetensors file (its header is not JSON); re-download it") from None
    data = f.read()
  out = {}
  for key, spec in header.items():
    if key == "__metadata__":
      continue
    if spec.get("dtype") not in _SAFETENSORS_DTYPES:
      raise UserError(f"{path}: tensor {key!r} has dtype {spec.get('dtype')}, which is not supported")
    begin, end = spec["data_offsets"]
    if end > len(data):
      raise UserError(f"{path} is truncated (tensor {key!r} ends past the end of the file); re-download it")
    dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]]).newbyteorder("<")
    out[key] = np.frombuffer(data[begin:end], dtype).reshape(spec["shape"])
  return out


def _read_pickle(path) -> dict:
  try:
    import torch
  except ImportError:
    raise UserError(f"{path} is a pickled PyTorch checkpoint and reading it needs torch "
                    "(pip install torch), or save it as .safetensors") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or unsafe files
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f"could not read {path} as a PyTorch checkpoint ({first})") from None
  for wrapper in _WRAPPERS:
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict):
    raise UserError(f"{path} holds a {type(obj).__name__}, not a state_dict; save model.state_dict() instead")
  return {k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy()
          for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_state_dict(path) -> dict:
  """{key: numpy array} from .safetensors (no torch needed) or .pth/.pt/.bin (torch); floats as float32."""
  if not os.path.isfile(path):
    raise UserError(f"checkpoint file {path} does not exist")
  sd = read_safetensors(path) if path.endswith(".safetensors") else _read_pickle(path)
  if any(k.startswith("backbone.") for k in sd):  # a DINO training checkpoint: the backbone, not the heads
    sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  if not sd:
    raise UserError(f"{path} holds no tensors")
  return {k: v.astype(np.float32) if v.dtype.kind == "f" or v.dtype == ml_dtypes.bfloat16 else v
          for k, v in sd.items()}
