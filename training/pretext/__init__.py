"""The six pretext tasks of sentiment-oriented pre-training, one module each (docs/method.md, "Pre-training").

============================  ==========================  =====  ===========================================
task (``PRETEXT_TASKS`` key)  class                       model  data
============================  ==========================  =====  ===========================================
``colorization``              :class:`Colorization`       ST     Places365 images (Lab computed on the device)
``super_resolution``          :class:`SuperResolution`    ST     Places365 images (downsampled on the device)
``scene``                     :class:`SceneRecognition`   HO     Places365 images + scene labels
``jigsaw``                    :class:`Jigsaw`             HO     Places365 images (tiles cut on the device)
``anp``                       :class:`ANPClassification`  HP     VSO images + ANP labels
``captioning``                :class:`Captioning`         HP     ArtEmis images + utterances (``vocab.collate``)
============================  ==========================  =====  ===========================================

Every task is built as ``cls(backbone, **options)`` and shares the interface of
:class:`~training.pretext.base.PretextTask`: ``prepare(batch) -> (inputs, targets)`` on the device,
``task(backbone, inputs) -> outputs``, ``loss(outputs, targets)``, ``step(backbone, batch)``. Loaders
yield RGB images in [0, 1] (not normalised). Names are imported on first use.
"""
from importlib import import_module
from typing import Any

# task name -> (module, class): the registry the perception models are built from
PRETEXT_TASKS = {'colorization': ('colorization', 'Colorization'),
                 'super_resolution': ('super_resolution', 'SuperResolution'),
                 'scene': ('scene', 'SceneRecognition'), 'jigsaw': ('jigsaw', 'Jigsaw'),
                 'anp': ('anp', 'ANPClassification'), 'captioning': ('captioning', 'Captioning')}
# public name -> module: the task classes, and the helpers beside them
_LAZY = {cls: module for module, cls in PRETEXT_TASKS.values()}
_LAZY.update({'PretextTask': 'base', 'ClassificationTask': 'base', 'rgb_to_lab': 'colorization',
              'lab_to_rgb': 'colorization', 'generate_permutations': 'jigsaw', 'load_permutations': 'jigsaw',
              'Vocabulary': 'captioning', 'tokenize': 'captioning'})
__all__ = ['PRETEXT_TASKS', 'get_task_class'] + list(_LAZY)


def get_task_class(name: str) -> type:
    """The task class registered as ``name`` in :data:`PRETEXT_TASKS`."""
    if name not in PRETEXT_TASKS:
        raise ValueError(f'unknown pretext task {name!r}; choose from {", ".join(PRETEXT_TASKS)}')
    module, cls = PRETEXT_TASKS[name]
    return getattr(import_module(f'{__name__}.{module}'), cls)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f'{__name__}.{_LAZY[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
