"""Import of PyTorch checkpoints (torchvision, timm, the DINOv2 release) into our parameter trees."""
from vision.weights.load import load_state_dict, read_safetensors
from vision.weights.mapping import Source, convert, model_kwargs, parse_source

__all__ = ["Source", "convert", "load_state_dict", "model_kwargs", "parse_source", "read_safetensors"]
