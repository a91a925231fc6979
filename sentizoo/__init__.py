"""sentizoo: sentiment-oriented pre-trained backbones and multi-model amalgamation for visual sentiment analysis.

``import sentizoo`` registers the ``senti_*`` models (and ``amalgamator_senti_*``) in timm. The public API is
what a user of the zoo and of its training front doors needs (README, "Python API"); the training loop and
inference (:func:`amalgamate`, :func:`predict` ...) are imported on first use, so importing the package stays
cheap. Everything else is importable from its module (``sentizoo.amalgamation``, ``sentizoo.datasets`` ...).
"""
from importlib import import_module
from typing import Any, List

from . import amalgamators as _amalgamators  # noqa: F401  (registers amalgamator_senti_* in timm)
from .models import ARCHS, BACKBONE_TAGS, FI_LABELS, TAGS, senti_name
from .saving import save_pretrained
from .version import __version__
from .weights import ChecksumMismatchError, InvalidWeightsError, WeightsNotFoundError, resolve_weights, zoo_home

_LAZY = {
    'amalgamate': 'sentizoo.engine',
    'finetune': 'sentizoo.engine',
    'evaluate': 'sentizoo.evaluation',
    'TrainOptions': 'sentizoo.options',
    'NonFiniteLossError': 'sentizoo.engine',
    'predict': 'sentizoo.inference',
    'Amalgamator': 'sentizoo.amalgamation',
    'create_amalgamator': 'sentizoo.amalgamation',
    'create_target': 'sentizoo.amalgamation',
    'get_task': 'sentizoo.tasks',
}

__all__ = ['__version__', 'ARCHS', 'TAGS', 'BACKBONE_TAGS', 'FI_LABELS', 'list_models', 'senti_name',
           'resolve_weights', 'save_pretrained', 'zoo_home', 'WeightsNotFoundError', 'ChecksumMismatchError',
           'InvalidWeightsError', *_LAZY]


def list_models(pretrained: bool = False) -> list:
    """Names of the senti_* models; with ``pretrained=True`` every ``arch.tag`` weight entry."""
    import timm
    return timm.list_pretrained('senti_*') if pretrained else timm.list_models('senti_*')


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> List[str]:
    """The module's names and the lazy ones, which exist before their first use (for ``dir()``, IDEs)."""
    return sorted({*globals(), *_LAZY})
