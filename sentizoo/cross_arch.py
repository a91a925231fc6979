"""Teachers of another architecture: recognising them, and where the target then starts from.

The official recipe starts the target from the HP teacher's backbone, which needs the teacher's architecture.
A target taught by the zoo's teachers of another architecture (a ConvNeXt taught by ResNets) starts instead
from its own timm ImageNet weights when they are already on this machine (the HF or torch hub cache: nothing
is downloaded behind the user's back), and from random weights otherwise; the choice is recorded with the
trained model (``sentizoo amalgamate`` writes it as ``init`` in config.json and history.json). The rule is
:func:`sentizoo.amalgamation.default_target_init`; this module tells the architectures apart and looks in the caches.
"""
from __future__ import annotations

import os
from typing import Mapping, Union

import torch.nn as nn

from .models import stock_name
from .stages import model_name
from .weights import FOLDER_PREFIXES

__all__ = ['architecture', 'same_architecture', 'timm_weights_cached']

Teachers = Union[None, str, Mapping[str, nn.Module]]


def architecture(model: Union[str, nn.Module]) -> str:
    """The stock timm architecture of a name or model: ``'senti_resnet50.hp'`` -> ``'resnet50'``; a folder's name
    by its last component: ``'hf-hub:me/senti_convnext_atto'`` -> ``'convnext_atto'``."""
    if isinstance(model, nn.Module):
        return stock_name(model_name(model))
    for prefix in FOLDER_PREFIXES:
        model = model.removeprefix(prefix)
    return stock_name(model.replace('\\', '/').rsplit('/', 1)[-1])


def same_architecture(target: Union[str, nn.Module], teachers: Teachers) -> bool:
    """Whether ``teachers`` (models, an architecture name, or ``None``: the target's own zoo teachers) have the
    target's architecture; for models, the HP teacher's (the one the official recipe starts the target from),
    else any teacher's."""
    if teachers is None:
        return True
    if isinstance(teachers, str):
        return architecture(teachers) == architecture(target)
    teacher = teachers['hp'] if 'hp' in teachers else next(iter(teachers.values()), None)
    return teacher is None or architecture(teacher) == architecture(target)


def timm_weights_cached(name: str) -> bool:
    """Whether timm's pretrained weights ``name`` (``'convnext_tiny'``, ``'resnet50.tv_in1k'``) are in the local
    HF hub or torch hub cache, so that ``pretrained=True`` loads them without a download."""
    import torch.hub
    from huggingface_hub import try_to_load_from_cache
    from timm.models._builder import resolve_pretrained_cfg

    from .weights import _hf_cache_dir

    cfg = resolve_pretrained_cfg(name)
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition('@')
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ['model.safetensors', 'pytorch_model.bin']):
            if isinstance(try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir(), revision=revision or None),
                          str):
                return True
    return bool(cfg.url) and os.path.isfile(os.path.join(torch.hub.get_dir(), 'checkpoints',
                                                         os.path.basename(cfg.url)))
