"""SE-ResNet and SE-ResNeXt (Hu et al. 2018, "Squeeze-and-Excitation Networks"), as timm's
`seresnet50` / `seresnext50_32x4d`.

resnet.py's ResNet v1.5 with squeeze-and-excitation (reduction 16, ReLU, sigmoid
gate) on the output of each bottleneck's last BN, before the residual add
(`se_reduction=16`). 28,088,024 and 27,559,896 params, equal to
`timm.create_model('seresnet50')` and `('seresnext50_32x4d')` (and to timm's
legacy_* ports of the Caffe models, which stride the first 1x1 conv instead; same
count). The parameter tree is resnet.py's plus `se/fc1`, `se/fc2` per block, as
timm's `layer{i}.{j}.se.fc1/fc2` state_dict entries.
Departures from timm: SE convs keep layers.SqueezeExcite's flax default init, and
the last BN scale is not zero-initialised unless `zero_init_residual=True`
(timm's zero_init_last=True).
"""
from vision.models.registry import register_model
from vision.models.resnet import ResNet


@register_model(default_image_size=224)
def seresnet50(**kw):
  """timm seresnet50: 28,088,024 params."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", **{"se_reduction": 16, **kw})


@register_model(default_image_size=224)
def seresnext50_32x4d(**kw):
  """timm seresnext50_32x4d: 27,559,896 params."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", groups=32, width_per_group=4,
                **{"se_reduction": 16, **kw})
