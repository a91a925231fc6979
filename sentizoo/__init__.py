"""sentizoo: sentiment-oriented pre-trained backbones and multi-model amalgamation for visual sentiment analysis.

``import sentizoo`` registers the ``senti_*`` models in timm. The training API (``amalgamate``,
``Amalgamator``, tasks) is imported on first use, so importing the package stays cheap.
"""
from importlib import import_module
from typing import Any

from . import models as _models  # registers senti_* in timm
from .models import ARCHS, FI_LABELS, TAGS, senti_name
from .version import __version__
from .weights import (ChecksumMismatchError, InvalidWeightsError, WeightsNotFoundError, resolve_weights,
                      save_pretrained, zoo_home)

_LAZY = {
    'amalgamate': 'sentizoo.engine',
    'finetune': 'sentizoo.engine',
    'evaluate': 'sentizoo.engine',
    'TrainOptions': 'sentizoo.engine',
    'NonFiniteLossError': 'sentizoo.engine',
    'Amalgamator': 'sentizoo.amalgamation',
    'create_amalgamator': 'sentizoo.amalgamation',
    'load_teachers': 'sentizoo.amalgamation',
    'needed_teachers': 'sentizoo.amalgamation',
    'init_target_from': 'sentizoo.amalgamation',
    'AmalgamationOutput': 'sentizoo.amalgamation',
    'stage_features': 'sentizoo.stages',
    'get_task': 'sentizoo.tasks',
    'load_image': 'sentizoo.data',
    'ImageLoadError': 'sentizoo.data',
    'list_images': 'sentizoo.data',
    'ImageFiles': 'sentizoo.data',
    'image_folder': 'sentizoo.datasets',
    'image_csv': 'sentizoo.datasets',
}

__all__ = ['__version__', 'ARCHS', 'TAGS', 'FI_LABELS', 'list_models', 'senti_name', 'resolve_weights',
           'save_pretrained', 'zoo_home', 'WeightsNotFoundError', 'ChecksumMismatchError', 'InvalidWeightsError',
           *_LAZY]


def list_models(pretrained: bool = False) -> list:
    """Names of the senti_* models; with ``pretrained=True`` every ``arch.tag`` weight entry."""
    import timm
    return timm.list_pretrained('senti_*') if pretrained else timm.list_models('senti_*')


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
