"""The amalgamation module as timm models, ``amalgamator_senti_<arch>``: what ``timm.create_model`` and torch.hub's
``amalgamator`` build (:func:`sentizoo.amalgamation.create_amalgamator`).

Registered by ``import sentizoo``; :mod:`sentizoo.amalgamation` is imported when one is first built, so importing the
package stays cheap. Named so that ``timm.list_models('senti_*')`` lists the backbones only.
"""
from __future__ import annotations

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from .models import ARCHS, amalgamator_cfg, senti_name, stock_name

default_cfgs = generate_default_cfgs({f'amalgamator_senti_{arch}.zoo': amalgamator_cfg(arch) for arch in ARCHS})


def _create_amalgamator(variant: str, pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                        cache_dir=None, **kwargs) -> nn.Module:
    from .amalgamation import create_amalgamator
    from .cross_arch import same_architecture
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    arch, teachers = stock_name(variant.removeprefix('amalgamator_')), kwargs.get('teachers')
    module = create_amalgamator(arch, pretrained=pretrained, **kwargs)
    module.pretrained_cfg = cfg.to_dict()
    if teachers and not same_architecture(arch, teachers):  # the cfg describes the arch's own teachers
        module.pretrained_cfg['description'] = (f'Amalgamation module: a {arch} target trained beside the '
                                                f'{senti_name(teachers)}.st/.ho/.hp teachers; keep .target.')
    return module


@register_model
def amalgamator_senti_vgg16_bn(pretrained: bool = False, **kwargs) -> nn.Module:
    """The paper's amalgamation module for VGG16-BN (:func:`sentizoo.amalgamation.create_amalgamator`)."""
    return _create_amalgamator('amalgamator_senti_vgg16_bn', pretrained, **kwargs)


@register_model
def amalgamator_senti_vgg19_bn(pretrained: bool = False, **kwargs) -> nn.Module:
    """The paper's amalgamation module for VGG19-BN (:func:`sentizoo.amalgamation.create_amalgamator`)."""
    return _create_amalgamator('amalgamator_senti_vgg19_bn', pretrained, **kwargs)


@register_model
def amalgamator_senti_resnet18(pretrained: bool = False, **kwargs) -> nn.Module:
    """The paper's amalgamation module for ResNet-18 (:func:`sentizoo.amalgamation.create_amalgamator`)."""
    return _create_amalgamator('amalgamator_senti_resnet18', pretrained, **kwargs)


@register_model
def amalgamator_senti_resnet50(pretrained: bool = False, **kwargs) -> nn.Module:
    """The paper's amalgamation module for ResNet-50 (:func:`sentizoo.amalgamation.create_amalgamator`)."""
    return _create_amalgamator('amalgamator_senti_resnet50', pretrained, **kwargs)


@register_model
def amalgamator_senti_resnet101(pretrained: bool = False, **kwargs) -> nn.Module:
    """The paper's amalgamation module for ResNet-101 (:func:`sentizoo.amalgamation.create_amalgamator`)."""
    return _create_amalgamator('amalgamator_senti_resnet101', pretrained, **kwargs)
