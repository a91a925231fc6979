"""Multi-model amalgamation (paper §3.5, Fig. 2): a target trains beside the ST, HO and HP teachers.

The paper's loss, for target ``b`` and teachers ``st``, ``ho``, ``hp`` (each with a fresh task head)::

    L = L_task(b) + L_task(st) + L_task(ho) + L_task(hp)
      + MSE(F_b1, F_st1) + MSE(F_b2, F_ho2) + MSE(F_b3, F_hp3) + MSE(logits_b, logits_hp)

unweighted, each MSE the mean over all elements, nothing detached and no teacher frozen: the teachers
are pulled towards the target as much as the target towards them. Stage ``k`` is always paired with the
same teacher (1: ``st``, 2: ``ho``, 3: ``hp``); see :mod:`sentizoo.stages` for the taps. The target may be any
timm model with ``forward_intermediates`` and the teachers of another architecture: where a target tap and its
teacher's differ in channels or size, a learned adapter (:mod:`sentizoo.adapters`) maps the target's tap onto
the teacher's before the MSE. Every term of Tables 3 and 4 can be switched off or re-weighted. Only the target
is needed at inference: in eval mode the module runs the target alone, and :attr:`Amalgamator.target` is the model
to keep (the adapters train with it but are not part of it).
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapters import build_adapters, resize_to
from .branches import run_branches, side_by_side_default
from .cross_arch import architecture, same_architecture, timm_weights_cached
from .models import ARCHS, BACKBONE_TAGS, imagenet_name, paper_arch, senti_name, stock_name
from .stages import AMALGAMATION_STAGES, model_name, stage_features
from .tasks import Task, get_task
from .weights import FOLDER_PREFIXES

__all__ = ['TEACHER_TAGS', 'STAGE_TEACHER', 'TARGET_INITS', 'AmalgamationOutput', 'Amalgamator', 'FineTuner',
           'needed_teachers', 'load_teachers', 'init_target_from', 'target_weights', 'default_target_init',
           'create_target', 'load_imagenet', 'teacher_family', 'teacher_name', 'create_amalgamator']

TEACHER_TAGS = BACKBONE_TAGS
"""The teachers are the three sentiment-pretrained backbones, in stage order (ST, HO, HP)."""
STAGE_TEACHER = dict(zip(AMALGAMATION_STAGES, TEACHER_TAGS))
"""The teacher whose features regularise each target stage (paper: low-, mid-, high-level)."""
TARGET_INITS = (*BACKBONE_TAGS, 'imagenet', 'random')
"""Where :func:`create_target` takes the target's backbone from (``'hp'``: the official recipe)."""


def needed_teachers(feature_stages: Sequence[int] = AMALGAMATION_STAGES, logits_teachers: Sequence[str] = ('hp',)
                    ) -> Tuple[str, ...]:
    """The teachers that these terms use, in :data:`TEACHER_TAGS` order (defaults: :class:`Amalgamator`'s)."""
    used = {STAGE_TEACHER[s] for s in feature_stages if s in STAGE_TEACHER} | set(logits_teachers)
    return tuple(t for t in TEACHER_TAGS if t in used)


def num_outputs(model: nn.Module, name: str = 'target') -> int:
    """``model.num_classes``; a ValueError naming ``name`` when the model has no classifier."""
    num_classes = getattr(model, 'num_classes', 0)
    if not num_classes:
        raise ValueError(f'{name} has no classifier (num_classes={num_classes}); create it with the task\'s '
                         'output size, e.g. timm.create_model(..., num_classes=8).')
    return num_classes


class AmalgamationOutput(NamedTuple):
    """What :class:`Amalgamator` returns in train mode."""

    logits: torch.Tensor
    """The target's logits (N, C)."""
    loss: torch.Tensor
    """The weighted sum of ``terms``: what to call ``backward()`` on."""
    terms: Dict[str, torch.Tensor]
    """Every unweighted term: ``task/<model>``, ``feat/<teacher>``, ``logits/<teacher>``."""


class Amalgamator(nn.Module):
    """The target and its teachers, trained together with the paper's loss.

    Args:
        target: the timm model to fine-tune (any with ``forward_intermediates``, :mod:`sentizoo.stages`), with
            its task head (``num_classes`` = task outputs). Initialising it from the HP backbone (the official
            recipe) is :func:`init_target_from`'s job; the target is used as given.
        teachers: ``{'st': ..., 'ho': ..., 'hp': ...}`` timm models (typically from :func:`load_teachers`), of
            the target's architecture or another; an architecture name (``'resnet50'``) loads that
            architecture's sentiment-pretrained teachers that the enabled terms need; ``None`` those of the
            target's architecture. Every teacher must be used by some term. A teacher whose head does not have
            the target's size gets a fresh one (``reset_classifier``); one that has it is kept as given.
        task: ``'sll'``, ``'mll'``, ``'ldl'`` or a :class:`~sentizoo.tasks.Task`.
        feature_stages: target stages regularised with MSE towards their teacher (1: ST, 2: HO, 3: HP).
        logits_teachers: teachers whose logits regularise the target's logits with MSE. For LDL the raw
            logits are compared (not the softmax), as for the other tasks.
        teacher_task_loss: add each teacher's task loss (Table 4).
        freeze_teachers: teachers get ``requires_grad=False``, stay in eval mode (BatchNorm statistics and
            dropout fixed) and run under ``no_grad``, stopping at the last stage they are needed for. Their
            task losses would then be constants, so they are left out whatever ``teacher_task_loss`` says.
            A frozen teacher in ``logits_teachers`` must come with a trained head of the target's size.
        loss_weights: per-term weights, e.g. ``{'feat/st': 0.5}`` (default 1 for every term).
        side_by_side: run the four models' forward and backward in parallel worker threads, one
            intra-op thread each (:mod:`sentizoo.branches`): the same loss and gradients, faster on a CPU
            with few cores (BENCHMARKS.md, "Amalgamation step"). ``None``: on CPU with 2+ torch threads, outside
            ``torch.distributed``, with trainable teachers (frozen ones leave one backward, the target's,
            which runs faster with every thread). ``True`` is not for DistributedDataParallel, whose
            gradient hooks expect the backward on one thread.
        adapter_norm: the norm layer of the adapters (timm name), created only for the teachers whose taps differ
            from the target's (:mod:`sentizoo.adapters`); ``'groupnorm1'`` keeps DistributedDataParallel without
            SyncBatchNorm equal to one process.

    Attributes:
        adapters: ``{teacher tag: Adapter}``, trained with the target, empty when every compared tap matches.
    """

    def __init__(self, target: nn.Module, teachers: Union[None, str, Mapping[str, nn.Module]] = None,
                 task: Union[str, Task] = 'sll', *, feature_stages: Sequence[int] = AMALGAMATION_STAGES,
                 logits_teachers: Sequence[str] = ('hp',), teacher_task_loss: bool = True,
                 freeze_teachers: bool = False, loss_weights: Optional[Mapping[str, float]] = None,
                 side_by_side: Optional[bool] = None, adapter_norm: str = 'batchnorm'):
        super().__init__()
        self.task = get_task(task)
        num_classes = num_outputs(target)
        self.feature_stages = tuple(sorted(set(feature_stages)))
        self.logits_teachers = tuple(t for t in TEACHER_TAGS if t in set(logits_teachers))
        if set(self.feature_stages) - set(AMALGAMATION_STAGES):
            raise ValueError(f'feature_stages must be a subset of {AMALGAMATION_STAGES}; got {tuple(feature_stages)}.')
        if set(logits_teachers) - set(TEACHER_TAGS):
            raise ValueError(f'logits_teachers must be a subset of {TEACHER_TAGS}; got {tuple(logits_teachers)}.')
        needed = needed_teachers(self.feature_stages, self.logits_teachers)
        if teachers is None or isinstance(teachers, str):
            teachers = load_teachers(_zoo_arch(target) if teachers is None else teachers, num_classes, tags=needed)
        self._check_teachers(teachers, set(needed))

        self.target = target
        self.teachers = nn.ModuleDict({tag: teachers[tag] for tag in TEACHER_TAGS if tag in teachers})
        self.freeze_teachers = freeze_teachers
        self.side_by_side = side_by_side
        self.teacher_task_loss = teacher_task_loss and not freeze_teachers
        fresh_heads = set()
        for tag, teacher in self.teachers.items():
            if getattr(teacher, 'num_classes', 0) != num_classes:
                teacher.reset_classifier(num_classes)
                fresh_heads.add(tag)
        if freeze_teachers:
            if fresh_heads & set(self.logits_teachers):
                raise ValueError(f'freeze_teachers=True with logits_teachers={self.logits_teachers}: the frozen '
                                 f'teacher(s) {sorted(fresh_heads & set(self.logits_teachers))} got a fresh, '
                                 'untrained head, so their logits are random. Pass logits_teachers=() or teachers '
                                 f'whose heads are trained for this task ({num_classes} outputs).')
            self.teachers.requires_grad_(False)
            self.teachers.eval()
        self.adapters = build_adapters(target, {STAGE_TEACHER[s]: (self.teachers[STAGE_TEACHER[s]], s)
                                                for s in self.feature_stages}, adapter_norm)

        self.term_names = (['task/target'] + [f'task/{t}' for t in self.teachers if self.teacher_task_loss]
                           + [f'feat/{STAGE_TEACHER[s]}' for s in self.feature_stages]
                           + [f'logits/{t}' for t in self.logits_teachers])
        unknown = set(loss_weights or {}) - set(self.term_names)
        if unknown:
            raise ValueError(f'loss_weights has terms {sorted(unknown)} that this configuration does not compute; '
                             f'its terms are {self.term_names}.')
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in self.term_names}

    def _check_teachers(self, teachers: Mapping[str, nn.Module], needed: set) -> None:
        unknown = set(teachers) - set(TEACHER_TAGS)
        missing = needed - set(teachers)
        unused = set(teachers) - needed
        if unknown or missing or unused:
            raise ValueError(
                f'teachers {sorted(teachers)} do not fit the terms (feature_stages={self.feature_stages}, '
                f'logits_teachers={self.logits_teachers}), which need {sorted(needed)}: '
                + '; '.join(msg for msg in (unknown and f'unknown tags {sorted(unknown)} (use {TEACHER_TAGS})',
                                            missing and f'missing {sorted(missing)}',
                                            unused and f'{sorted(unused)} used by no term') if msg) + '.')

    def _teacher_needs_logits(self, tag: str) -> bool:
        return self.teacher_task_loss or tag in self.logits_teachers

    @property
    def has_unused_parameters(self) -> bool:
        """Whether some trainable teacher parameters get no gradient: a teacher without task loss or logits
        term stops at its last tap, so its later layers and head are unused. Wrap in DistributedDataParallel
        with ``find_unused_parameters=model.has_unused_parameters``."""
        return not self.freeze_teachers and not all(self._teacher_needs_logits(t) for t in self.teachers)

    def train(self, mode: bool = True) -> 'Amalgamator':
        super().train(mode)
        if self.freeze_teachers:
            self.teachers.eval()
        return self

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, AmalgamationOutput]:
        """Eval mode: the target's logits. Train mode: :class:`AmalgamationOutput` (``targets`` required)."""
        if not self.training:
            return self.target(images)
        if targets is None:
            raise ValueError('Amalgamator in train mode needs targets: forward(images, targets). '
                             'Call .eval() for inference.')
        stages = {tag: [s for s in self.feature_stages if STAGE_TEACHER[s] == tag] for tag in self.teachers}
        side_by_side = (side_by_side_default(images.device) and not self.freeze_teachers
                        if self.side_by_side is None else self.side_by_side)
        outputs = run_branches([self._target_branch(images)]
                               + [partial(self._branch, teacher, images, stages[tag], self._teacher_needs_logits(tag),
                                          self.freeze_teachers) for tag, teacher in self.teachers.items()],
                               side_by_side)
        *feats, logits = outputs[0]
        feats = dict(zip(self.feature_stages, feats))
        terms = {'task/target': self.task.loss(logits, targets)}
        for tag, (*t_feats, t_logits) in zip(self.teachers, outputs[1:]):
            if self.teacher_task_loss:
                terms[f'task/{tag}'] = self.task.loss(t_logits, targets)
            for s, t_feat in zip(stages[tag], t_feats):
                terms[f'feat/{tag}'] = F.mse_loss(resize_to(feats[s], t_feat), t_feat)
            if tag in self.logits_teachers:
                terms[f'logits/{tag}'] = F.mse_loss(logits, t_logits)
        terms = {name: terms[name] for name in self.term_names}  # a fixed order, for logging
        loss = sum(self.loss_weights[name] * value for name, value in terms.items())
        return AmalgamationOutput(logits, loss, terms)

    def _target_branch(self, images: torch.Tensor):
        """The target's part of the step: its taps, through their adapters, then its logits."""
        def branch() -> List[torch.Tensor]:
            *feats, logits = self._branch(self.target, images, self.feature_stages, True, False)
            tags = [STAGE_TEACHER[s] for s in self.feature_stages]
            return [self.adapters[t](f) if t in self.adapters else f for t, f in zip(tags, feats)] + [logits]
        return branch

    @staticmethod
    def _branch(model: nn.Module, images: torch.Tensor, stages: Sequence[int], with_logits: bool, frozen: bool
                ) -> List[Optional[torch.Tensor]]:
        """One model's part of the step: its stage taps, then its logits (``None`` when not needed)."""
        with torch.no_grad() if frozen else nullcontext():
            feats, logits = stage_features(model, images, stages, with_logits)
        return [*feats, logits]


class FineTuner(nn.Module):
    """The target alone with the Amalgamator's interface (``.target``, train-mode output with terms): plain
    fine-tuning with the task loss, the paper's baseline (what :func:`sentizoo.finetune` trains)."""

    def __init__(self, target: nn.Module, task: Task):
        super().__init__()
        self.target = target
        self.task = task

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, AmalgamationOutput]:
        logits = self.target(images)
        if not self.training:
            return logits
        loss = self.task.loss(logits, targets)
        return AmalgamationOutput(logits, loss, {'task/target': loss})


def _zoo_arch(target: nn.Module) -> str:
    """The senti name of the target's architecture, whose teachers ``teachers=None`` loads."""
    try:
        return senti_name(target)
    except ValueError as e:
        raise ValueError(f"{e} Pass teachers of one of those architectures, e.g. teachers='resnet50'.") from None


def load_teachers(arch: Union[str, nn.Module], num_classes: int, tags: Sequence[str] = TEACHER_TAGS, *,
                  pretrained: bool = True) -> Dict[str, nn.Module]:
    """The sentiment-pretrained teachers of an architecture, each with a fresh ``num_classes`` head.

    ``arch`` is an architecture name (``'resnet50'``, ``'senti_resnet50'``) or a timm model of it. Weights resolve
    through :mod:`sentizoo.weights` (``$SENTIZOO_HOME``, the HF cache, the hub); a missing file raises
    :class:`~sentizoo.weights.WeightsNotFoundError` saying where it looked; ``pretrained=False``: random (tests).

    Teachers of a timm architecture outside the zoo, pre-trained with the source repository's
    ``training.pretrain --arch ARCH`` and written by ``training.export``, load from their folders, verified as
    every zoo folder is (:func:`~sentizoo.weights.load_folder`): ``arch='convnext_atto'`` reads
    ``$SENTIZOO_HOME/senti_convnext_atto.<tag>/`` (the export's default), and a ``local-dir:`` or ``hf-hub:`` name
    gets ``.<tag>`` appended (``'hf-hub:me/senti_convnext_atto'`` -> ``'hf-hub:me/senti_convnext_atto.hp'``).
    """
    name = model_name(arch) if isinstance(arch, nn.Module) else arch
    if _outside_the_zoo(name):
        return {tag: _folder_teacher(name, tag, num_classes, pretrained) for tag in tags}
    return {tag: timm.create_model(teacher_name(arch, tag), pretrained=pretrained, num_classes=num_classes)
            for tag in tags}


def _outside_the_zoo(name: str) -> bool:
    """A folder name, or a timm architecture the zoo has no weights for: its teachers load from folders."""
    return name.startswith(FOLDER_PREFIXES) or (stock_name(name) not in ARCHS and timm.is_model(stock_name(name)))


def teacher_family(arch: Union[str, nn.Module]) -> str:
    """The name :func:`load_teachers` reads ``arch``'s teachers under, less the tag: ``'senti_resnet50'`` in the zoo,
    ``'senti_convnext_atto'`` (folders in ``$SENTIZOO_HOME``, as ``training.export`` writes them) for another timm
    architecture, a ``local-dir:``/``hf-hub:`` folder name as it is.

    Raises:
        ValueError: ``arch`` is neither in the zoo, nor a timm architecture, nor a folder name.
    """
    name = model_name(arch) if isinstance(arch, nn.Module) else arch
    if name.startswith(FOLDER_PREFIXES):
        return name
    return f'senti_{stock_name(name)}' if _outside_the_zoo(name) else senti_name(arch)


def teacher_name(arch: Union[str, nn.Module], tag: str) -> str:
    """The weights :func:`load_teachers` reads as ``arch``'s ``tag`` teacher, e.g. ``'senti_resnet50.hp'``."""
    return f'{teacher_family(arch)}.{tag}'


def _folder_teacher(name: str, tag: str, num_classes: int, pretrained: bool) -> nn.Module:
    """The ``tag`` teacher of :func:`load_teachers` for a folder name or an architecture outside the zoo."""
    from .weights import WeightsNotFoundError, load_folder, resolve_folder, zoo_home

    if name.startswith(FOLDER_PREFIXES):
        source = teacher_name(name, tag)
    elif pretrained:
        source = f'local-dir:{zoo_home() / teacher_name(name, tag)}'
    else:
        return timm.create_model(stock_name(name), num_classes=num_classes)
    try:
        folder, published = resolve_folder(source)
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(f'{e} Teachers outside the zoo are pre-trained and exported with the sentizoo '
                                   f'source repository: python -m training.pretrain --model {tag} --arch '
                                   f'{architecture(name)} ..., then python -m training.export --checkpoint '
                                   f'.../final.pt --tag {tag}.') from None
    model = load_folder(folder, published)[0] if pretrained else timm.create_model(f'local-dir:{folder}')
    model.reset_classifier(num_classes)
    return model


def init_target_from(target: nn.Module, source: nn.Module) -> nn.Module:
    """Copy ``source``'s backbone into ``target`` in place, keeping the target's classifier; returns ``target``.

    The official recipe initialises the target from the HP backbone: ``init_target_from(target,
    timm.create_model('senti_resnet50.hp', pretrained=True))``; without it the target keeps the weights it has.
    A stock timm VGG source's fc6/fc7 (``pre_logits``) are left out when the target has none (the paper's head,
    :class:`~sentizoo.models.PaperVGG`).
    """
    head = target.pretrained_cfg.get('classifier', 'fc') + '.'
    ours = {k: v for k, v in target.state_dict().items() if not k.startswith(head)}
    theirs = {k: v for k, v in source.state_dict().items()
              if not k.startswith(head) and (k in ours or not k.startswith('pre_logits.'))}
    mismatched = sorted(set(ours) ^ set(theirs)) + [k for k in ours if k in theirs and ours[k].shape != theirs[k].shape]
    if mismatched:
        raise ValueError(f'init_target_from: {type(source).__name__} does not match the target backbone '
                         f'({len(mismatched)} keys differ in name or shape, e.g. {mismatched[:3]}); '
                         'use a source of the target\'s architecture.')
    target.load_state_dict(theirs, strict=False)
    return target


def create_amalgamator(arch: str = 'resnet50', num_classes: int = 8, task: Union[str, Task] = 'sll',
                       pretrained: bool = True, teachers: Optional[str] = None, **options) -> Amalgamator:
    """The paper's amalgamation module, an ``arch`` target plus the ST, HO and HP teachers, as the official recipe
    builds it; what ``timm.create_model('amalgamator_senti_<arch>')`` and torch.hub's ``amalgamator`` return.

    Every model gets a fresh ``num_classes`` head; the target starts from the HP backbone (teachers of another
    architecture: :func:`default_target_init`). Train it like any module: in train mode
    ``forward(images, targets)`` returns the target's logits, the loss and every loss term; ``.target`` is the
    model to keep.

    Args:
        arch: resnet18/50/101, vgg16_bn or vgg19_bn (or its senti name); with ``teachers``, any timm architecture.
        num_classes: outputs of the downstream task.
        task: ``sll``, ``mll`` or ``ldl``.
        pretrained: load the teachers' sentiment-pretrained weights (``senti_<arch>.<tag>``); else random (the
            target too, when the teachers are of another architecture).
        teachers: the teachers' architecture (default ``arch``), e.g. ``'resnet50'`` for a ``convnext_tiny`` target.
        **options: every :class:`Amalgamator` option (``feature_stages``, ``logits_teachers``,
            ``teacher_task_loss``, ``freeze_teachers``, ``loss_weights``, ``side_by_side``, ``adapter_norm``).
    """
    teachers = teachers or arch
    own = same_architecture(arch, teachers)
    # Only the teachers the terms use (Amalgamator refuses unused ones), plus HP to initialise the target.
    tags = needed_teachers(**{k: options[k] for k in ('feature_stages', 'logits_teachers') if k in options})
    models = load_teachers(teachers, num_classes, tuple(t for t in TEACHER_TAGS if t in tags or (own and t == 'hp')),
                           pretrained=pretrained)
    init = 'hp' if own else default_target_init(arch, teachers) if pretrained else 'random'
    target = create_target(arch, num_classes, init, source=models['hp'] if own else None)
    return Amalgamator(target, {t: models[t] for t in tags}, task, **options)


def target_weights(arch: str, init: str = 'hp') -> str:
    """The weights a target of ``arch`` starts from with ``init``, as a timm name: ``'senti_resnet50.hp'`` for a
    zoo tag (another timm architecture: its exported folder's name, :func:`teacher_name`), torchvision's ImageNet
    weights ``'resnet50.tv_in1k'`` for ``'imagenet'`` (as the paper and ``training.pretrain``; an architecture
    outside the zoo: timm's default weights), ``'random'`` for none.

    Raises:
        ValueError: an unknown ``init``, or a zoo tag for a name that is no timm architecture.
    """
    if init in BACKBONE_TAGS:
        return teacher_name(arch, init)
    if init == 'imagenet':
        return imagenet_name(arch) if stock_name(arch) in ARCHS else stock_name(arch)
    if init == 'random':
        return init
    raise ValueError(f'init must be one of {TARGET_INITS}; got {init!r}.')


def default_target_init(arch: str, teachers: Optional[str] = None) -> str:
    """The :func:`create_target` init of an ``arch`` target taught by ``teachers`` (an architecture; ``None``: the
    target's own): ``'hp'`` for its own (the official recipe); for another, ``'imagenet'`` when those weights are
    already on this machine (:func:`~sentizoo.cross_arch.timm_weights_cached`: nothing is downloaded), else
    ``'random'``."""
    if same_architecture(arch, teachers):
        return 'hp'
    return 'imagenet' if timm_weights_cached(target_weights(arch, 'imagenet')) else 'random'


def create_target(arch: str, num_classes: int, init: str = 'hp', *, source: Optional[nn.Module] = None,
                  img_size: Optional[int] = None, **kwargs) -> nn.Module:
    """The model to fine-tune or amalgamate: ``arch`` as the paper builds it (:func:`sentizoo.models.paper_arch`:
    the VGGs with the paper's head) with a fresh ``num_classes`` head, its backbone copied from
    :func:`target_weights` (``init='hp'``: the HP backbone, the official recipe; ``'random'``: none).

    Args:
        arch: ``'resnet50'``, ``'senti_resnet50'`` or any timm architecture (a zoo tag ``init`` then reads the
            backbone ``training.export`` wrote for it, as :func:`load_teachers` does).
        num_classes: outputs of the task.
        init: one of :data:`TARGET_INITS`.
        source: a model that already holds those weights (e.g. the HP teacher), copied instead of loading them.
        img_size: the input size, for architectures built for one size (timm's ``fixed_input_size``: ViT, Swin,
            ...; their ImageNet position embeddings are resampled to it); others take any size and ignore it.
        **kwargs: other ``timm.create_model`` arguments of the target (e.g. ``drop_path_rate``).

    The head is drawn first, so the same ``torch.manual_seed`` gives the same head whatever ``init`` is.

    Raises:
        OSError: ``init='imagenet'`` offline without the weights (:func:`load_imagenet`).
    """
    name = target_weights(arch, init)
    cfg = timm.models.get_pretrained_cfg(stock_name(arch))
    sized = dict(img_size=img_size) if img_size and cfg is not None and cfg.fixed_input_size else {}
    target = timm.create_model(paper_arch(stock_name(arch)), num_classes=num_classes, **sized, **kwargs)
    if init == 'random':
        return target
    if source is None:
        source = load_imagenet(name, **sized) if init == 'imagenet' else load_teachers(arch, 0, (init,))[init]
    return init_target_from(target, source)


def load_imagenet(name: str, **kwargs) -> nn.Module:
    """timm's ``name`` (``'resnet50.tv_in1k'``) with its pretrained weights; ``kwargs`` go to ``timm.create_model``.

    Raises:
        OSError: at once, when ``HF_HUB_OFFLINE`` is set (read now, not at import) and no local cache holds the
            weights, rather than after timm's download attempts.
    """
    from .weights import hf_offline

    if hf_offline() and not timm_weights_cached(name):
        raise OSError(f'{name} is in neither the Hugging Face nor the torch hub cache, and HF_HUB_OFFLINE is set')
    return timm.create_model(name, pretrained=True, **kwargs)
