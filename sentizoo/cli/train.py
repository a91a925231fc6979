"""``sentizoo amalgamate`` (and ``--baseline`` fine-tuning) and ``sentizoo evaluate``: the training front doors
of :mod:`sentizoo.engine` on a folder or CSV of labelled images."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from .common import (DATA_HELP, PROG, UsageError, add_classifier_parser, add_data_arguments, check_output,
                     check_writable_dir, create_classifier, data_config, loader, open_labelled, task_for, usage_errors,
                     write_results)

__all__ = ['add_amalgamate_parser', 'add_evaluate_parser']

# The TrainOptions fields that are options of `sentizoo amalgamate` (help texts here, defaults in TrainOptions);
# device, channels_last and progress come with the data options (add_data_arguments).
_TRAIN_OPTIONS: Dict[str, Any] = {
    'amp': 'bf16 autocast on CUDA for the training steps (default: on; evaluation is fp32)',
    'epochs': '(default: %(default)s)',
    'lr': 'SGD learning rate (default: %(default)s)',
    'momentum': '(default: %(default)s)',
    'weight_decay': '(default: %(default)s)',
    'step_size': 'epochs between lr decays (default: %(default)s)',
    'gamma': 'lr decay factor (default: %(default)s)',
    'seed': '(default: %(default)s)',
    'checkpoint_dir': dict(type=Path, metavar='DIR', help='(default: OUTPUT/checkpoints)'),
    'checkpoint_every': dict(metavar='N', help='also checkpoint every N steps'),
    'sync_batchnorm': 'under torchrun on GPUs: BatchNorm statistics over the global batch',
}
_ENGINE_OPTIONS = ('device', 'channels_last', 'progress')


def _train_options(args: argparse.Namespace, task: str) -> Dict[str, Any]:
    """The keyword arguments of ``finetune`` (``--baseline``) or ``amalgamate``."""
    options = {name: getattr(args, name) for name in (*_TRAIN_OPTIONS, *_ENGINE_OPTIONS)}
    options.update(task=task, checkpoint_dir=args.checkpoint_dir or args.output / 'checkpoints')
    if not args.baseline:
        options.update(feature_stages=args.feature_stages, logits_teachers=args.logits_teachers,
                       teacher_task_loss=not args.no_teacher_task_loss, freeze_teachers=args.freeze_teachers,
                       teachers=args.teachers, target_init='given')  # --init already chose the target's weights
    return options


def _trained_cfg(model, config: dict, init: str, teachers: List[str], description: str) -> dict:
    """The pretrained config of a model trained here: the preprocessing and input size it was trained with and
    the licence of the weights it derives from (the senti weights' CC BY-NC 4.0 once one took part)."""
    from timm.models import get_pretrained_cfg

    from ..models import tag_cfg
    from ..saving import trained_cfg

    cfg = dict(trained_cfg(model.pretrained_cfg, config), description=description)
    if teachers or init.startswith('senti_'):
        cfg.update({k: tag_cfg('hp')[k] for k in ('license', 'paper_name', 'origin_url')})
    elif init != 'random':
        cfg.update(license=get_pretrained_cfg(init).license)
    return cfg


def _create_target(args: argparse.Namespace, num_classes: int):
    """The target of MODEL with ``--init``'s backbone (:func:`sentizoo.amalgamation.create_target`) and the name
    of the weights it starts from (default: :func:`sentizoo.amalgamation.default_target_init`)."""
    import timm

    from ..amalgamation import create_target, default_target_init, target_weights
    from ..models import senti_name, stock_name
    from ..weights import WeightsNotFoundError

    if not timm.is_model(stock_name(args.model)):
        raise UsageError(f'unknown architecture {args.model!r}; e.g. resnet50 or senti_resnet50.')
    if not (args.baseline or args.teachers):  # the default teachers are MODEL's own: the zoo's five only
        try:
            senti_name(args.model)
        except ValueError as e:
            raise UsageError(f'{e} Pass --teachers: one of those, or {args.model} itself when training.export '
                             'wrote its ST, HO and HP into $SENTIZOO_HOME.') from None
    init = args.init or ('imagenet' if args.baseline else default_target_init(args.model, args.teachers))
    try:
        name = target_weights(args.model, init)
    except ValueError as e:
        raise UsageError(f'--init {init}: {e}') from e
    try:
        return create_target(args.model, num_classes, init, img_size=args.img_size), name
    except OSError as e:  # timm's ImageNet weights, neither cached nor downloadable (offline, no network)
        if isinstance(e, WeightsNotFoundError):
            raise
        raise WeightsNotFoundError(f'--init {init}: cannot load {name}: not in the Hugging Face cache and not '
                                   f'downloaded ({type(e).__name__}); run once with network access (without '
                                   f'HF_HUB_OFFLINE=1) to cache them, or pass --init random.') from None


def _save(args: argparse.Namespace, model, labels: List[str], provenance: Dict[str, Any], checkpoints: Path) -> int:
    """Write the trained target to ``--output`` (zoo format + history.json); 1 if that fails."""
    from ..saving import save_pretrained
    try:
        save_pretrained(model, args.output, label_names=labels, extra_config=provenance)
        history = dict(model.sentizoo_history, **provenance)
        (args.output / 'history.json').write_text(json.dumps(history, indent=2) + '\n')
    except OSError as e:
        print(f'{PROG} amalgamate: error: cannot write {args.output} ({e.strerror or e}); the trained model '
              f'is safe in {checkpoints}: fix the cause and rerun the same command to write it (nothing is '
              f'trained again).', file=sys.stderr)
        return 1
    best = model.sentizoo_history['best_epoch']
    print(f'{PROG} amalgamate: wrote {args.output}' + (f' (best epoch {best} on --val)' if best else ''),
          file=sys.stderr)
    return 0


def _run_amalgamate(args: argparse.Namespace) -> int:
    import torch

    from ..amalgamation import needed_teachers, teacher_name
    from ..datasets import eval_transform, paper_data_config, train_transform
    from ..engine import NonFiniteLossError, amalgamate, finetune
    from ..weights import WEIGHTS_ERRORS

    for folder, flag in ((args.output, '--output'), (args.checkpoint_dir, '--checkpoint-dir')):
        if folder is not None:
            check_writable_dir(folder, flag)
    if args.baseline and args.teachers:
        raise UsageError('--teachers with --baseline: plain fine-tuning has no teachers; drop one of the two.')
    train_set, task = open_labelled(args.train), task_for(args.train, args.task)
    val_set = open_labelled(args.val) if args.val else None
    labels = train_set.label_names
    if val_set is not None and val_set.label_names != labels:
        raise UsageError(f'--val {args.val} has labels {val_set.label_names[:8]}, the training data {labels[:8]}.')
    options = _train_options(args, task)
    try:
        with usage_errors(FileExistsError):  # data or options that do not fit, found before training
            torch.manual_seed(args.seed)  # before the target's new head is drawn: same seed, same weights
            model, init = _create_target(args, len(labels))
            config = paper_data_config(args.img_size or 224)  # the paper's protocol, whatever timm's cfg of the arch
            train_set.transform = train_transform(config)
            val_loader = None
            if val_set is not None:
                val_set.transform = eval_transform(config)
                val_loader = loader(val_set, args, shuffle=False)
            teachers = [] if args.baseline else [teacher_name(args.teachers or model, t) for t in needed_teachers(
                args.feature_stages, args.logits_teachers)]
            model = (finetune if args.baseline else amalgamate)(model, loader(train_set, args, shuffle=True),
                                                                val_loader=val_loader, **options)
    except (*WEIGHTS_ERRORS, NonFiniteLossError) as e:
        print(f'{PROG} amalgamate: error: {e}', file=sys.stderr)
        return 1
    except OSError as e:  # a full disk or a folder made read-only mid-run, a file that broke mid-epoch
        print(f'{PROG} amalgamate: error: {e}. The checkpoints written so far are intact: fix the cause (free disk '
              f'space, a writable folder) and rerun the same command to resume from the last one in '
              f'{options["checkpoint_dir"]}.', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{PROG} amalgamate: interrupted. Rerun the same command to resume from the last checkpoint in '
              f'{options["checkpoint_dir"]}.', file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    if int(os.environ.get('RANK', '0')) != 0:
        return 0
    how = f'amalgamated with {", ".join(teachers)}' if teachers else 'fine-tuned'
    description = f'{model.pretrained_cfg["architecture"]} {how} on {args.train.name} ({task}), starting from {init}.'
    model.pretrained_cfg = _trained_cfg(model, config, init, teachers, description)
    return _save(args, model, labels, dict(task=task, init=init, teachers=teachers), options['checkpoint_dir'])


def add_amalgamate_parser(subparsers) -> None:
    from ..amalgamation import TARGET_INITS, TEACHER_TAGS
    from ..options import TrainOptions
    from ..stages import AMALGAMATION_STAGES
    from .arguments import add_dataclass_arguments

    p = subparsers.add_parser(
        'amalgamate', help='fine-tune a target with the ST/HO/HP teachers (the paper\'s amalgamation)',
        description='Fine-tune a target of architecture MODEL on TRAIN while the sentiment-pretrained ST, HO and '
                    'HP teachers (senti_<arch>.st/.ho/.hp from the zoo, of MODEL\'s architecture or --teachers\') '
                    'train beside it with the paper\'s loss; '
                    'keep the epoch that scores best on --val and write it to --output in the zoo format '
                    '(model.safetensors + config.json, loadable by `sentizoo evaluate OUTPUT`), with '
                    'history.json. Checkpoints go to OUTPUT/checkpoints after every epoch; rerunning the same '
                    'command resumes. Defaults are the paper\'s (sentizoo.TrainOptions: SGD with momentum and '
                    'weight decay, the lr decayed stepwise). Under torchrun every process runs this command. '
                    + DATA_HELP)
    p.add_argument('model', metavar='MODEL', help='architecture: resnet18/50/101, vgg16_bn, vgg19_bn (or senti_*); '
                                                  'with --teachers any timm model, e.g. convnext_tiny')
    p.add_argument('train', metavar='TRAIN', type=Path, help='training data (see DATA above)')
    p.add_argument('--val', type=Path, metavar='DATA', help='validation data for model selection (not the test set)')
    p.add_argument('--output', type=Path, required=True, metavar='DIR', help='where to write the trained target')
    p.add_argument('--baseline', action='store_true',
                   help='plain fine-tuning without teachers (the paper\'s baseline)')
    p.add_argument('--teachers', metavar='ARCH',
                   help='the teachers\' architecture, e.g. senti_resnet50 (default: MODEL\'s), another timm '
                        'architecture whose senti_<arch>.st/.ho/.hp folders training.export wrote into the zoo, or '
                        'a local-dir:/hf-hub: name of such folders less the tag; where their stage features differ '
                        'from MODEL\'s, small adapters bridge them during training only')
    p.add_argument('--init', choices=TARGET_INITS,
                   help='target initialisation: hp = the senti HP backbone (default, official), st / ho = the other '
                        'senti backbones, imagenet = torchvision\'s ImageNet weights, timm\'s <arch>.tv_in1k (default '
                        'with --baseline, as in the paper), random. With --teachers of another architecture the '
                        'default is imagenet when those weights are cached on this machine, else random')
    add_data_arguments(p)
    add_dataclass_arguments(p, TrainOptions, _TRAIN_OPTIONS)
    ablation = p.add_argument_group('ablations (paper Tables 3 and 4)')
    ablation.add_argument('--feature-stages', type=int, nargs='*', choices=AMALGAMATION_STAGES,
                          default=list(AMALGAMATION_STAGES), metavar='K',
                          help='target stages regularised towards ST (1), HO (2), HP (3) (default: 1 2 3)')
    ablation.add_argument('--logits-teachers', nargs='*', choices=TEACHER_TAGS, default=['hp'],
                          metavar='T', help='teachers whose logits regularise the target\'s (default: hp)')
    ablation.add_argument('--no-teacher-task-loss', action='store_true', help='drop the teachers\' task losses')
    ablation.add_argument('--freeze-teachers', action='store_true', help='teachers fixed, in eval mode (faster)')
    p.set_defaults(func=_run_amalgamate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..datasets import eval_transform
    from ..engine import evaluate
    from ..weights import WEIGHTS_ERRORS

    if args.output is not None:
        check_output(args.output)
    try:
        model, saved_task = create_classifier(args)
    except WEIGHTS_ERRORS as e:
        print(f'{PROG} evaluate: error: {e}', file=sys.stderr)
        return 1
    task = task_for(args.data, args.task or saved_task)
    dataset = open_labelled(args.data, eval_transform(data_config(model, args.img_size)))
    if len(dataset.label_names) != model.num_classes:
        raise UsageError(f'{args.data} has {len(dataset.label_names)} labels, the model {model.num_classes} outputs.')
    with usage_errors():
        metrics = evaluate(model, loader(dataset, args, shuffle=False), task, device=args.device,
                           channels_last=args.channels_last, progress=args.progress)
    if int(os.environ.get('RANK', '0')) != 0:
        return 0
    text = (json.dumps(metrics, indent=2) if args.format == 'json'
            else ''.join(f'{name:<14}{value:.6f}\n' for name, value in metrics.items()))
    return 0 if write_results(args.output, lambda out: out.write(text.rstrip('\n') + '\n'), 'evaluate') else 1


def add_evaluate_parser(subparsers) -> None:
    p = add_classifier_parser(
        subparsers, 'evaluate', help='score a classifier on a labelled image folder or CSV',
        description='Compute the task\'s metrics (sll: accuracy; mll: Hamming loss, ranking loss, micro/macro F1; '
                    'ldl: Chebyshev, Clark, Canberra, KL, Cosine, Intersection) of MODEL on DATA, with the '
                    'evaluation transform (resize, center crop). MODEL is a folder written by `sentizoo amalgamate` '
                    '(its task is remembered) or a classifier name such as senti_resnet50.fi. ' + DATA_HELP)
    p.add_argument('data', metavar='DATA', type=Path, help='labelled images (see DATA above)')
    add_data_arguments(p)
    p.add_argument('--format', choices=('table', 'json'), default='table', help='output format (default: table)')
    p.add_argument('--output', type=Path, help='write the metrics to this file instead of stdout')
    p.set_defaults(func=_run_evaluate)
