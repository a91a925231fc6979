"""The ``senti_*`` model family: stock timm architectures with sentiment-oriented weights.

Every entry point builds the stock timm architecture (``resnet50`` for ``senti_resnet50``), so a
model is a plain timm model: ``num_classes``, ``features_only``, ``forward_intermediates`` and the
data-config helpers behave exactly as for the stock name. Only the pretrained configs and the
weight resolution (:mod:`sentizoo.weights`) are ours.

Tags, one Hugging Face repo each (``sentizoo/<arch>.<tag>``):

* ``hp`` (default): high-level perceiving backbone (ANP classification + affective captioning),
* ``ho``: holistic organizing backbone (scene recognition + jigsaw),
* ``st``: stimuli taking backbone (colorization + super-resolution),
* ``fi``: the amalgamated target fine-tuned on FI (8 emotions, classifier included).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, model_entrypoint, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.vgg import VGG
from timm.models.vgg import cfgs as vgg_cfgs

from .published import HUB_ORG
from .weights import read_config, resolve_weights, weights_mismatch

__all__ = ['ARCHS', 'BACKBONE_TAGS', 'TAGS', 'FI_LABELS', 'PREPROCESSING', 'PaperVGG', 'senti_name', 'stock_name',
           'tagged_name', 'tag_cfg', 'imagenet_name', 'paper_arch', 'amalgamator_cfg', 'label_names']

ARCHS = ('vgg16_bn', 'vgg19_bn', 'resnet18', 'resnet50', 'resnet101')
BACKBONE_TAGS = ('st', 'ho', 'hp')
"""The three sentiment-pretrained models, ST, HO and HP: the one definition every module derives from. The
order is the paper's perception pipeline (stimuli -> holistic -> high-level), which is also the amalgamation's:
target stage k is regularised towards the k-th (:data:`sentizoo.amalgamation.STAGE_TEACHER`)."""
TAGS = (*BACKBONE_TAGS[::-1], 'fi')  # hp first: timm makes the first tag of an architecture its default
FI_LABELS = ('amusement', 'anger', 'awe', 'contentment', 'disgust', 'excitement', 'fear', 'sadness')

PREPROCESSING = dict(crop_pct=0.875, crop_mode='squash', interpolation='bilinear', mean=IMAGENET_DEFAULT_MEAN,
                     std=IMAGENET_DEFAULT_STD)
"""The paper's image preprocessing as timm data-config keys: the image is resized to a square of
``size / crop_pct`` (256 for 224, aspect ratio not kept), then cropped to ``size`` (centre crop to evaluate,
random crop + flip to train; :mod:`sentizoo.datasets`). Every ``senti_*`` weight carries it."""

_PAPER = ('Probing Sentiment-Oriented Pre-Training Inspired by Human Sentiment Perception Mechanism '
          '(Feng, Liu, Yang; CVPR 2023)')
_DESCRIPTIONS = {
    'hp': 'High-level perceiving backbone: ANP classification (VSO) + affective image captioning (ArtEmis).',
    'ho': 'Holistic organizing backbone: 365-way scene recognition + 3x3 jigsaw puzzles (Places365).',
    'st': 'Stimuli taking backbone: colorization + super-resolution (Places365).',
    'fi': 'Target amalgamated with the ST/HO/HP models and fine-tuned on FI (8 emotions).',
}


def tag_cfg(tag: str) -> Dict[str, Any]:
    """The pretrained_cfg keys of ``tag`` weights whatever their architecture: classes, the paper's preprocessing
    (:data:`PREPROCESSING`, 224 px), licence, description and paper (``training.export`` gives them to the backbones
    it writes for a timm architecture outside the zoo, too)."""
    is_classifier = tag not in BACKBONE_TAGS
    return dict(
        num_classes=len(FI_LABELS) if is_classifier else 0,
        label_names=FI_LABELS if is_classifier else None,
        input_size=(3, 224, 224), **PREPROCESSING,
        license='cc-by-nc-4.0',
        description=_DESCRIPTIONS[tag],
        paper_name=_PAPER,
        origin_url='https://github.com/tinglyfeng/sentiment_pretraining',
    )


def _cfg(arch: str, tag: str) -> Dict[str, Any]:
    return dict(
        hf_hub_id=f'{HUB_ORG}/senti_{arch}.{tag}',
        hf_hub_filename='model.safetensors',
        pool_size=(7, 7),
        first_conv='features.0' if arch.startswith('vgg') else 'conv1',
        classifier='head.fc' if arch.startswith('vgg') else 'fc',
        **tag_cfg(tag),
    )


def amalgamator_cfg(arch: str) -> Dict[str, Any]:
    """The pretrained config of ``amalgamator_senti_<arch>`` (registered by :mod:`sentizoo.amalgamation`): no
    weight file of its own; the teachers and the target's start resolve by tag (``senti_<arch>.st/.ho/.hp``)."""
    cfg = {k: v for k, v in _cfg(arch, 'hp').items() if k not in ('hf_hub_id', 'hf_hub_filename')}
    return dict(cfg, num_classes=len(FI_LABELS), label_names=None, first_conv=f'target.{cfg["first_conv"]}',
                classifier=f'target.{cfg["classifier"]}',
                description=f'The paper\'s amalgamation module for {arch}: the target starts from senti_{arch}.hp '
                            f'and trains beside the senti_{arch}.st/.ho/.hp teachers (loaded by tag); keep '
                            f'.target.')


# One entry per weight file (their sha256: sentizoo.published); the first tag of each arch is its default.
default_cfgs = generate_default_cfgs({f'senti_{arch}.{tag}': _cfg(arch, tag) for arch in ARCHS for tag in TAGS})


def stock_name(name: str) -> str:
    """``'senti_resnet50.hp'`` -> ``'resnet50'``: the timm architecture a senti model is built on."""
    return name.split('.')[0].removeprefix('senti_')


def tagged_name(arch: str, tag: str) -> str:
    """``'senti_<arch>.<tag>'``: the name of ``arch``'s ``tag`` weights, registered for the zoo's architectures; for
    another timm architecture, the folder name ``training.export`` writes its pre-trained backbones under (in
    ``$SENTIZOO_HOME``, where :func:`sentizoo.amalgamation.load_teachers` finds them)."""
    return f'senti_{stock_name(arch)}.{tag}'


def imagenet_name(arch: str) -> str:
    """The ImageNet weights the paper starts from, as a timm name: torchvision's (``'resnet50.tv_in1k'``).

    Pre-training, the baselines and ``--init imagenet`` all use these, never timm's default tag (for ResNets
    timm's ``a1_in1k`` recipe, trained differently and preprocessed with bicubic resizing and crop 0.95).
    """
    return f'{stock_name(arch)}.tv_in1k'


def paper_arch(arch: str) -> str:
    """The timm name the paper's experiments build ``arch`` with: ``senti_<arch>`` for a zoo architecture (the
    VGGs then have the paper's head, :class:`PaperVGG`; the ResNets are stock), else ``arch`` itself."""
    return senti_name(arch) if stock_name(arch) in ARCHS else arch


def senti_name(arch: Union[str, nn.Module]) -> str:
    """The senti family name for an architecture, tagged name or timm model: ``'senti_resnet50'``.

    Raises:
        ValueError: the architecture has no sentiment-pretrained weights in the zoo.
    """
    if isinstance(arch, nn.Module):
        cfg = getattr(arch, 'pretrained_cfg', None) or {}
        if not cfg.get('architecture'):
            raise ValueError(f'{type(arch).__name__} is not a timm model (no pretrained_cfg["architecture"]); '
                             f'create it with timm.create_model using one of {ARCHS}.')
        arch = cfg['architecture']
    base = stock_name(arch)
    if base not in ARCHS:
        raise ValueError(f'No sentiment-pretrained weights exist for {arch!r}; sentizoo covers {", ".join(ARCHS)}.')
    return f'senti_{base}'


class PaperVGG(VGG):
    """timm's VGG with the paper's head: global average pooling of the conv features and one
    ``Linear(512, num_classes)``. timm's fc6/fc7 ``ConvMlp`` (4096 wide, ~120M parameters) is not there: the
    official code has none, and it changes the logits the amalgamation compares and the cost."""

    def __init__(self, cfg: List[Any], num_classes: int = 1000, global_pool: str = 'avg', drop_rate: float = 0.,
                 **kwargs) -> None:
        super().__init__(cfg, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate, **kwargs)
        self.pre_logits = nn.Identity()
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.head_hidden_size = self.num_features


def label_names(model: nn.Module) -> Optional[List[str]]:
    """The label names of a classifier's pretrained config, None without one per class."""
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    return list(names) if names and len(names) == getattr(model, 'num_classes', None) else None


_PREPROCESSING_KEYS = ('input_size', *PREPROCESSING)


def _weights_preprocessing(file: str) -> Dict[str, Any]:
    """The preprocessing that the config.json beside a weight file records: it wins over the registry's, as
    the weights were trained (and are documented) with it."""
    saved = read_config(Path(file).parent)
    cfg = dict(saved.get('pretrained_cfg') or {}, **{k: saved[k] for k in _PREPROCESSING_KEYS if k in saved})
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in _PREPROCESSING_KEYS}


def _create(variant: str, pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
            **kwargs) -> nn.Module:
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    if pretrained and cfg.source not in ('hf-hub', 'local-dir'):  # those timm loads from where they name
        # Resolve (and verify) here so timm only ever sees a local safetensors file: no network retries.
        file = str(resolve_weights(f'{variant}.{cfg.tag}', cfg, cache_dir=kwargs.get('cache_dir')))
        cfg = dataclasses.replace(cfg, file=file, custom_load=False, **_weights_preprocessing(file))
    arch = stock_name(variant)
    try:
        if arch.startswith('vgg'):
            return build_model_with_cfg(PaperVGG, arch, pretrained, pretrained_cfg=cfg, model_cfg=vgg_cfgs[arch[:5]],
                                        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4, 5)),
                                        norm_layer=nn.BatchNorm2d, **kwargs)
        return model_entrypoint(arch)(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    except RuntimeError as e:  # keys or shapes that do not fit: one line naming the file
        if pretrained and str(e).startswith('Error(s) in loading state_dict'):
            raise weights_mismatch(cfg.file, e) from None
        raise


@register_model
def senti_vgg16_bn(pretrained: bool = False, **kwargs) -> nn.Module:
    """VGG16-BN with sentiment-oriented pre-training (tags: hp, ho, st, fi)."""
    return _create('senti_vgg16_bn', pretrained, **kwargs)


@register_model
def senti_vgg19_bn(pretrained: bool = False, **kwargs) -> nn.Module:
    """VGG19-BN with sentiment-oriented pre-training (tags: hp, ho, st, fi)."""
    return _create('senti_vgg19_bn', pretrained, **kwargs)


@register_model
def senti_resnet18(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-18 with sentiment-oriented pre-training (tags: hp, ho, st, fi)."""
    return _create('senti_resnet18', pretrained, **kwargs)


@register_model
def senti_resnet50(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-50 with sentiment-oriented pre-training (tags: hp, ho, st, fi)."""
    return _create('senti_resnet50', pretrained, **kwargs)


@register_model
def senti_resnet101(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-101 with sentiment-oriented pre-training (tags: hp, ho, st, fi)."""
    return _create('senti_resnet101', pretrained, **kwargs)
