"""The ST, HO and HP perception models: one timm backbone trained on two pretext tasks at once.

======  =====================================  ==========================================
model   tasks (``PERCEPTION_TASKS``)           perception step it models (the paper's VSP)
======  =====================================  ==========================================
``st``  colorization + super_resolution        stimuli taking: colour and texture
``ho``  scene + jigsaw                         holistic organizing: scene and layout
``hp``  anp + captioning                       high-level perceiving: objects, states, relations
======  =====================================  ==========================================

Each step sums the two task losses; each task gets its batch from its own loader (the caller cycles
the shorter one)::

    model = build_perception_model('hp', 'resnet50', anp=dict(classes=vso.classes),
                                   captioning=dict(vocab=Vocabulary.build(artemis.utterances)))
    loss, terms = model.training_step(anp_batch, caption_batch)   # terms: {'anp': ..., 'captioning': ...}

``model.backbone`` is a timm model with ``num_classes=0``: its state dict is exactly what is exported
as ``senti_<arch>.<tag>``; the task heads live under ``model.tasks``.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn

from sentizoo.models import ARCHS, BACKBONE_TAGS, paper_arch, stock_name

from sentizoo.checkpoint import read_state_dict
from .pretext import get_task_class
from .pretext.base import PretextTask, pretext_indices

__all__ = ['PerceptionModel', 'build_perception_model', 'check_arch', 'load_backbone', 'PERCEPTION_TASKS']

PERCEPTION_TASKS = dict(zip(BACKBONE_TAGS, (('colorization', 'super_resolution'), ('scene', 'jigsaw'),
                                            ('anp', 'captioning'))))
"""The pretext tasks of each model (ST, HO, HP), in the order their losses are logged."""
_CLASSIFIER_PREFIXES = ('fc.', 'head.fc.', 'classifier.', 'pre_logits.')  # pre_logits: a stock VGG's fc6/fc7


class PerceptionModel(nn.Module):
    """A backbone and its two pretext tasks.

    Args:
        kind: ``'st'``, ``'ho'`` or ``'hp'`` (recorded; the tasks decide the behaviour).
        backbone: a timm model with ``num_classes=0`` (:func:`~training.pretext.base.pretext_indices`).
        tasks: the two :class:`~training.pretext.base.PretextTask` instances, in loader order.
    """

    def __init__(self, kind: str, backbone: nn.Module, tasks: Sequence[PretextTask]):
        super().__init__()
        self.kind = kind
        self.backbone = backbone
        self.tasks = nn.ModuleDict((task.name, task) for task in tasks)

    @property
    def collate_fns(self) -> Tuple[Optional[Callable], ...]:
        """The ``DataLoader`` collate function of each task's loader, in task order (``None``: default)."""
        return tuple(task.collate_fn for task in self.tasks.values())

    def training_step(self, *batches: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """One batch per task (already on the device, images in [0, 1]) -> (summed loss, {task name: loss})."""
        if len(batches) != len(self.tasks):
            raise ValueError(f'{self.kind.upper()} training_step takes one batch per task '
                             f'({", ".join(self.tasks)}), got {len(batches)}')
        terms = {name: task.step(self.backbone, batch) for (name, task), batch in zip(self.tasks.items(), batches)}
        return sum(terms.values()), terms

    def forward(self, *batches: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Same as :meth:`training_step`, so ``DistributedDataParallel(model)`` syncs the whole step."""
        return self.training_step(*batches)


def load_backbone(backbone: nn.Module, weights: Union[str, Path, Mapping[str, torch.Tensor]]) -> None:
    """Load a state dict (a ``.safetensors`` / torch file, or a mapping) in timm layout into ``backbone``.

    Classifier tensors (``fc.``, ``head.fc.``, ``classifier.``, a stock VGG's ``pre_logits.``) the backbone does
    not have are dropped; any other missing, unexpected or mis-shaped tensor is an error naming the source.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else 'the given state dict'
    state = read_state_dict(weights) if isinstance(weights, (str, Path)) else dict(weights)
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_CLASSIFIER_PREFIXES)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f'pretrained_backbone {source} does not fit {type(backbone).__name__}: missing {missing[:5]}, '
                         f'unexpected {unexpected[:5]}, wrong shape {wrong[:5]} '
                         f'(of {len(missing)}/{len(unexpected)}/{len(wrong)}); pass weights of the same architecture '
                         f'in timm key layout')
    backbone.load_state_dict(state)


def build_perception_model(kind: str, arch: str, pretrained_backbone: Union[None, str, Path, Mapping] = None,
                           **task_kwargs: Mapping[str, Any]) -> PerceptionModel:
    """Build the ``kind`` perception model on a fresh timm ``arch`` backbone (``num_classes=0``).

    Args:
        kind: ``'st'``, ``'ho'`` or ``'hp'``.
        arch: a zoo architecture (resnet18/50/101, vgg16_bn, vgg19_bn: the paper's) or any timm architecture
            whose four stages the pretext heads can read (:func:`~training.pretext.base.pretext_indices`).
        pretrained_backbone: ``None`` (random initialisation) or weights for the backbone: a file or a
            state dict, see :func:`load_backbone`.
        **task_kwargs: options of each task by task name, e.g. ``scene=dict(classes=places.classes)``,
            ``jigsaw=dict(permutations=100, tile=16)``, ``anp=dict(classes=vso.classes)`` (required),
            ``captioning=dict(vocab=vocab, hidden_dim=64)`` (``vocab`` required).
    """
    if kind not in PERCEPTION_TASKS:
        raise ValueError(f'kind must be one of {tuple(PERCEPTION_TASKS)}, got {kind!r}')
    names = PERCEPTION_TASKS[kind]
    unknown = sorted(set(task_kwargs) - set(names))
    if unknown:
        raise ValueError(f'the {kind.upper()} model has the tasks {names}; got options for {unknown}')
    backbone = timm.create_model(paper_arch(arch), pretrained=False, num_classes=0)  # VGGs: the paper's head
    if pretrained_backbone is not None:
        load_backbone(backbone, pretrained_backbone)
    tasks = []
    for name in names:
        cls, options = get_task_class(name), dict(task_kwargs.get(name) or {})
        try:
            inspect.signature(cls).bind(backbone, **options)
        except TypeError as e:
            raise TypeError(f'build_perception_model({kind!r}): {name} task: {e}; pass its options as '
                            f'{name}=dict(...), see {cls.__module__}.{cls.__name__}') from None
        tasks.append(cls(backbone, **options))
    return PerceptionModel(kind, backbone, tasks)


def check_arch(arch: str) -> None:
    """Raise ValueError (one line) unless ``arch`` is a timm architecture whose four stages the pretext heads can
    read (:func:`training.pretext.base.pretext_indices`); checked on the meta device: nothing is allocated."""
    if arch in ARCHS:
        return
    if arch != stock_name(arch) or not timm.is_model(arch):
        raise ValueError(f'--arch {arch!r}: expected a timm architecture name without tag or senti_ prefix, e.g. '
                         f'{", ".join(ARCHS)} (the paper\'s) or convnext_atto (see timm.list_models())')
    with torch.device('meta'):
        backbone = timm.create_model(arch, num_classes=0)
    pretext_indices(backbone)
