"""Model zoo. Importing this package registers every family with the registry."""
from vision.models import lenet, resnet  # noqa: F401  (registration side effects)
from vision.models import convnext, efficientnet, mobilenet  # noqa: F401
from vision.models import alexnet, densenet, googlenet, nin, vgg  # noqa: F401
from vision.models import preact_resnet, senet  # noqa: F401
from vision.models import swin  # noqa: F401
from vision.models import vit  # noqa: F401
from vision.models.registry import (ModelInfo, abstract_variables, create_model, list_models, model_info,
                                     num_params, register_model)

__all__ = ["ModelInfo", "abstract_variables", "create_model", "list_models", "model_info", "num_params",
           "register_model"]
