"""JAX/Flax image classification and self-supervised pretraining."""
from vision.errors import UserError

__all__ = ["UserError"]
