"""Export a training checkpoint to the zoo format: ``model.safetensors`` + ``config.json`` + model card.

    python -m training.export --checkpoint runs/pretrain/hp_resnet50/final.pt --tag hp
    python -m training.export --checkpoint runs/fi/best.pt --tag fi --arch resnet50 --results results/fi.json
    python -m training.export --checkpoint ... --tag hp --push [--repo-id sentizoo/senti_resnet50.hp] [--dry-run]

The files go to ``--out`` (default ``$SENTIZOO_HOME/senti_<arch>.<tag>/``), where
``timm.create_model('senti_<arch>.<tag>', pretrained=True)`` finds them. Backbone tags (st, ho, hp)
keep only the backbone (``num_classes=0``; the pretext heads stay in the checkpoint); classifier
tags (fi) keep the classifier and its ``label_names``. The weights are written by
:func:`sentizoo.weights.save_pretrained`; the model card (``README.md``) is rendered from
``model_cards/template.md`` with the facts recorded in the checkpoint and the evaluation results
given with ``--results`` (JSON files of ``{"dataset", "metric", "value", ...}`` records), and no other
number. ``--push`` uploads the folder to the Hugging Face hub (``--dry-run`` lists what it would upload).

A backbone pre-trained on a timm architecture outside the zoo (``training.pretrain --arch convnext_atto``) is
written the same way, as ``senti_<arch>.<tag>``, but timm's registry does not know that name: stock timm
rebuilds it from the folder (``local-dir:`` / ``hf-hub:``, :func:`sentizoo.weights.load_folder`), and
:func:`sentizoo.amalgamation.load_teachers` finds it in ``$SENTIZOO_HOME``.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from sentizoo.checkpoint import read as read_checkpoint
from sentizoo.checkpoint import read_state_dict
from sentizoo.models import ARCHS, BACKBONE_TAGS, TAGS, senti_name, stock_name, tag_cfg, tagged_name
from sentizoo.saving import save_pretrained, trained_cfg
from sentizoo.weights import CONFIG_NAME, read_config, zoo_home

from .downstream import FORMAT as DOWNSTREAM_FORMAT
from .downstream import SYNTHETIC
from .model_card import _fmt, base_model, pretrain_recipe, render_card, validate_results

__all__ = ['Exported', 'export', 'find_prefix', 'push_to_hub', 'load_card_results', 'published_line', 'main']

PathLike = Union[str, Path]


class Exported(NamedTuple):
    name: str  # 'senti_resnet50.hp'
    folder: Path
    sha256: str


def find_prefix(state: Mapping[str, torch.Tensor], model: nn.Module, prefix: Optional[str] = None) -> str:
    """The key prefix under which ``state`` holds exactly ``model``'s tensors (``''``, ``'backbone.'``, ...).

    Raises ValueError when no prefix fits, or when several do and ``prefix`` does not pick one (an
    amalgamation checkpoint holds the target and the teachers).
    """
    own = model.state_dict()
    anchor = next(iter(own))

    def fits(p: str) -> bool:
        return all(p + k in state and state[p + k].shape == v.shape for k, v in own.items())

    if prefix is not None:
        if not fits(prefix):
            raise ValueError(f'the checkpoint has no complete {type(model).__name__} under prefix {prefix!r}')
        return prefix
    candidates = sorted({k[:-len(anchor)] for k in state if k.endswith(anchor)})
    fitting = [p for p in candidates if fits(p)]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        raise ValueError(f'the checkpoint holds no complete {type(model).__name__} with {len(own)} tensors '
                         f'(prefixes tried: {candidates or "none"}); check --arch and --tag')
    raise ValueError(f'several models in the checkpoint fit: prefixes {fitting}; choose one with --prefix')


def load_card_results(paths: Sequence[PathLike]) -> List[Dict[str, Any]]:
    """Evaluation records from JSON files: a list of records, ``{"results": [...]}``, or the result file of a
    ``training.downstream`` run (its test metrics)."""
    results: List[Dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise ValueError(f'--results {path}: cannot read it as JSON ({e})') from None
        if isinstance(data, Mapping) and data.get('format') == DOWNSTREAM_FORMAT:
            data = _downstream_records(data, path)
        records = data.get('results') if isinstance(data, Mapping) else data
        if not isinstance(records, list):
            raise ValueError(f'{path}: expected a JSON list of result records, {{"results": [...]}} or the result '
                             f'file of a training.downstream run')
        results += validate_results(records, origin=str(path))
    return results


def _downstream_records(result: Mapping[str, Any], path: PathLike) -> List[Dict[str, Any]]:
    """The test metrics of a ``training.downstream`` result file as card records."""
    return [dict(dataset=result['dataset'], metric=metric, value=value, split='test', task=result['task'],
                 source=f'{path} ({result["experiment"]}/{result["run"]})', synthetic=bool(result['synthetic']))
            for metric, value in result['test'].items()]


def _recipe(ckpt: Mapping[str, Any]) -> Tuple[List[Tuple[str, Any]], List[str], bool]:
    """(facts, commands, synthetic) of the run recorded in a checkpoint; only what it recorded."""
    config = ckpt.get('config') if isinstance(ckpt.get('config'), Mapping) else {}
    commands = [ckpt['command']] if ckpt.get('command') else []
    synthetic = config.get('dataset') == 'synthetic'
    if ckpt.get('trainer') == 'training.pretrain':
        c, history = config, json.loads(ckpt.get('history') or '{}').get('epochs', [])
        facts = pretrain_recipe(
            c, data='; '.join(f'{task}: {d["dataset"]}, {d["samples"]} samples'
                              for task, d in ckpt.get('data', {}).items()) or c.get('dataset'),
            init=ckpt.get('init', 'not recorded'),
            schedule=f"{ckpt.get('epoch')} of {c['epochs']} epochs, {ckpt.get('global_step')} steps; batch "
                     f"{c['batch_size']} per task and process, {ckpt.get('world_size', 1)} process(es); "
                     f"crop {c['image_size']} px")
        facts += [('Precision', ckpt.get('precision', 'not recorded')), ('Seed', c['seed'])]
        if history:
            last = history[-1]
            facts.append((f"Mean losses of the last epoch ({last['epoch']})",
                          ', '.join(f'{k} {_fmt(v)}' for k, v in last['train'].items())))
    else:  # a checkpoint of another trainer: list the scalar settings it recorded
        facts = [(k, v) for k, v in config.items() if isinstance(v, (str, int, float, bool))]
        facts = facts or [('Training facts', 'not recorded in the checkpoint')]
    if ckpt.get('versions'):
        facts.append(('Software', ', '.join(f'{k} {v}' for k, v in ckpt['versions'].items())))
    return facts, commands, synthetic


def _checked_arch(checkpoint: Path, config: Mapping[str, Any], arch: Optional[str], tag: str) -> str:
    """The architecture to export: ``arch`` or the one ``config`` records (they must agree), for a matching tag."""
    recorded_arch = config.get('arch')
    if arch and recorded_arch and stock_name(arch) != stock_name(recorded_arch):
        raise ValueError(f'--arch {arch} but the checkpoint was trained with {recorded_arch}')
    arch = arch or recorded_arch
    if not arch:
        raise ValueError(f'{checkpoint} does not record its architecture; pass --arch (e.g. one of {ARCHS})')
    if config.get('model') in BACKBONE_TAGS and config['model'] != tag:
        raise ValueError(f'{checkpoint} is a {config["model"].upper()} pre-training checkpoint; export it with '
                         f'--tag {config["model"]}, not --tag {tag}')
    if stock_name(arch) not in ARCHS and tag not in BACKBONE_TAGS:
        raise ValueError(f'--tag {tag}: {arch} is outside the zoo ({", ".join(ARCHS)}); training.export writes its '
                         f'pre-trained backbones (--tag {"/".join(BACKBONE_TAGS)}) only')
    return arch


def _recorded(checkpoint: Path, config: Mapping[str, Any]) -> Dict[str, Any]:
    """What the files of a run record about the weights (``dataset``, ``image_size``, ``description``,
    ``label_names``, ``synthetic``): a ``training.pretrain`` checkpoint's config; the ``config.json`` beside a
    ``.safetensors`` file (``sentizoo amalgamate --output``, ``save_pretrained``); the result file of the
    ``training.downstream`` run whose checkpoint folder holds the file (``<run>/best.safetensors`` beside
    ``<run>.json``)."""
    facts = {k: config.get(k) for k in ('dataset', 'image_size')}
    beside, run = checkpoint.parent / CONFIG_NAME, checkpoint.parent.with_suffix('.json')
    if checkpoint.suffix == '.safetensors' and beside.is_file():
        saved = read_config(checkpoint.parent)
        cfg = saved.get('pretrained_cfg') or {}
        facts.update(image_size=(cfg.get('input_size') or [None])[-1], description=cfg.get('description'),
                     label_names=saved.get('label_names'))
    elif run.is_file():
        result = json.loads(run.read_text(encoding='utf-8'))
        if isinstance(result, Mapping) and result.get('format') == DOWNSTREAM_FORMAT:
            facts.update(dataset=result['dataset'], image_size=result['config'].get('image_size'))
    facts['synthetic'] = facts.get('dataset') == SYNTHETIC
    return {k: v for k, v in facts.items() if v is not None}


def _check_tag(tag: str) -> None:
    if tag not in TAGS and not re.fullmatch(r'[a-z][a-z0-9_]*', tag):
        raise ValueError(f'--tag {tag!r}: use a zoo tag ({", ".join(TAGS)}) or a name of your own classifier in '
                         f'lower case (letters, digits, _), e.g. --tag mydata')


def _classifier_cfg(cfg: Mapping[str, Any], tag: str, dataset: Optional[str], arch: str, num_classes: int,
                    recorded: Mapping[str, Any]) -> Dict[str, Any]:
    """The cfg of a classifier: the zoo tag's own only for the zoo's data (``fi`` on FI), else what was recorded."""
    if tag in TAGS and dataset == tag:
        return dict(cfg)
    trained_on = f'trained on {dataset}' if dataset else 'trained on data the checkpoint does not record'
    return dict(cfg, tag=tag, hf_hub_id=cfg.get('hf_hub_id') if tag in TAGS else None,
                description=recorded.get('description') or f'{stock_name(arch)} classifier ({num_classes} classes) '
                                                           f'{trained_on}.')


def export(checkpoint: PathLike, tag: str, *, arch: Optional[str] = None, out: Optional[PathLike] = None,
           results: Sequence[Mapping[str, Any]] = (), label_names: Optional[Sequence[str]] = None,
           prefix: Optional[str] = None, command: Optional[str] = None, dataset: Optional[str] = None,
           repo_id: Optional[str] = None, verbose: bool = True) -> Exported:
    """Write ``senti_<arch>.<tag>`` from ``checkpoint`` into ``out``; returns its name, folder and sha256.

    Args:
        checkpoint: a ``training.pretrain`` checkpoint, another trainer's torch checkpoint holding a
            state dict (``model``/``state_dict`` entry or the dict itself), or a ``.safetensors`` file.
        tag: ``st``, ``ho``, ``hp`` (backbone only), ``fi`` or a tag of your own for a classifier.
        arch: the architecture; read from the checkpoint's config when it has one.
        out: output folder; default ``$SENTIZOO_HOME/senti_<arch>.<tag>``.
        results: evaluation records for the card and its model-index (only real results).
        label_names: classifier tags: the class names (default: the checkpoint's, else the registry's).
        prefix: key prefix of the model's tensors when the checkpoint holds several models.
        command: the export command line, for the card (default: reconstructed).
        dataset: a classifier's training data, for its card (default: what the run recorded, :func:`_recorded`).
        repo_id: the hub repository of the card (default: the zoo's, ``sentizoo/<name>``).
        verbose: print the files written and where their sha256 goes once published (for maintainers).
    """
    import timm
    _check_tag(tag)
    checkpoint = Path(checkpoint)
    ckpt = {} if checkpoint.suffix == '.safetensors' else read_checkpoint(checkpoint)
    config = ckpt.get('config') if isinstance(ckpt.get('config'), Mapping) else {}
    arch = _checked_arch(checkpoint, config, arch, tag)
    zoo = stock_name(arch) in ARCHS
    name = tagged_name(arch, tag)
    template = name if tag in TAGS else f'{senti_name(arch)}.fi'  # a classifier of the user's own tag
    recorded = _recorded(checkpoint, config)
    kwargs: Dict[str, Any] = {}
    if tag not in BACKBONE_TAGS:
        label_names = list(label_names or ckpt.get('label_names') or recorded.get('label_names') or
                           timm.models.get_pretrained_cfg(template).to_dict().get('label_names') or [])
        if not label_names:
            raise ValueError(f'{name} is a classifier: pass --label-names')
        kwargs['num_classes'] = len(label_names)
    if zoo:
        model = timm.create_model(template, pretrained=False, **kwargs)
    else:  # a backbone pre-trained on another timm architecture: its own structure, the tag's facts, no hub repo
        model = timm.create_model(stock_name(arch), pretrained=False, num_classes=0)
        model.pretrained_cfg = dict(trained_cfg(model.pretrained_cfg), **tag_cfg(tag), tag=tag)
    state = read_state_dict(ckpt or checkpoint)
    prefix = find_prefix(state, model, prefix)
    model.load_state_dict({k: state[prefix + k] for k in model.state_dict()})
    dataset = dataset or recorded.get('dataset')
    if tag not in BACKBONE_TAGS:
        model.pretrained_cfg = _classifier_cfg(model.pretrained_cfg, tag, dataset, arch, model.num_classes, recorded)
    if recorded.get('image_size'):  # the size it was trained at (the demo's 32 or 64 px), not the registry's 224
        size = recorded['image_size']
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, size, size), pool_size=None)

    folder = Path(out) if out else zoo_home() / name
    sha256 = save_pretrained(model, folder, label_names=label_names if tag not in BACKBONE_TAGS else None,
                             verbose=verbose)
    facts, commands, synthetic = _recipe(ckpt)
    commands.append(command or shlex.join(['python', '-m', 'training.export', '--checkpoint', str(checkpoint),
                                           '--tag', tag, '--arch', arch]))
    cfg, synthetic = model.pretrained_cfg, synthetic or recorded['synthetic']
    datasets = None  # the tag's own (a backbone's pretext data, FI for fi)
    if tag not in BACKBONE_TAGS and dataset != tag:
        datasets = (dataset, [dataset]) if dataset else ('not recorded in the checkpoint (export with --dataset)', [])
    card = render_card(name, repo_id=repo_id or cfg.get('hf_hub_id') or f'sentizoo/{name}',
                       architecture=stock_name(name), description=cfg.get('description') or name, recipe=facts,
                       commands=commands, results=results, synthetic=synthetic, num_classes=model.num_classes,
                       image_size=cfg['input_size'][-1], datasets=datasets,
                       base_model=None if synthetic else base_model(stock_name(name), tag, str(ckpt.get('init', ''))))
    (folder / 'README.md').write_text(card, encoding='utf-8')
    if verbose and zoo and tag in TAGS:
        print(f'to publish it, upload {folder} and set its line in {published_line(name)}:  \'{name}\': \'{sha256}\',')
    return Exported(name, folder, sha256)


def published_line(name: str) -> str:
    """``sentizoo/published.py:<line>``: where the sha256 of ``name`` goes once its weights are published."""
    import sentizoo.published

    path = Path(sentizoo.published.__file__)
    number = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(f"'{name}':"))
    return f'sentizoo/published.py:{number}'


def push_to_hub(folder: PathLike, repo_id: str, *, dry_run: bool = False, api: Any = None) -> List[str]:
    """Upload ``folder`` to the model repo ``repo_id`` (created if needed); returns the uploaded files.

    ``dry_run`` only lists them. Authentication is huggingface_hub's (``HF_TOKEN`` or ``hf auth login``).
    """
    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())
    print(('would upload' if dry_run else 'uploading') + f' to https://huggingface.co/{repo_id}: ' + ', '.join(files))
    if dry_run:
        return files
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi()
    api.create_repo(repo_id, repo_type='model', exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type='model',
                      commit_message=f'Upload {folder.name} (sentizoo training.export)')
    return files


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m training.export', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='training checkpoint (final.pt / last.pt of training.pretrain, '
                                                       'another trainer\'s .pt, or .safetensors)')
    p.add_argument('--tag', required=True, help='zoo tag: st/ho/hp backbones, fi classifier; or a tag of your own '
                                                'classifier (lower case, e.g. mydata)')
    p.add_argument('--arch', help=f'architecture: one of {", ".join(ARCHS)}, or the timm architecture a backbone was '
                                  'pre-trained on (default: recorded in the checkpoint)')
    p.add_argument('--out', help='output folder (default: $SENTIZOO_HOME/senti_<arch>.<tag>)')
    p.add_argument('--results', nargs='*', default=[], metavar='JSON',
                   help='evaluation result files for the model card: [{"dataset", "metric", "value", "split", '
                        '"task", "source", "synthetic"}, ...]')
    p.add_argument('--label-names', nargs='+', help='class names of a classifier tag (default: checkpoint / registry)')
    p.add_argument('--dataset', help='a classifier\'s training data, for its card (default: recorded by the run)')
    p.add_argument('--prefix', help='key prefix of the model in a checkpoint holding several (e.g. target.)')
    p.add_argument('--push', action='store_true', help='upload the folder to the Hugging Face hub')
    p.add_argument('--repo-id', help='hub repo for --push (default: sentizoo/senti_<arch>.<tag>)')
    p.add_argument('--dry-run', action='store_true', help='with --push: list the files, upload nothing')
    args = p.parse_args(argv)
    if (args.repo_id or args.dry_run) and not args.push:
        p.error('--repo-id and --dry-run only apply with --push')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = shlex.join(['python', '-m', 'training.export', *(sys.argv[1:] if argv is None else argv)])
    try:
        exported = export(args.checkpoint, args.tag, arch=args.arch, out=args.out,
                          results=load_card_results(args.results), label_names=args.label_names, prefix=args.prefix,
                          command=command, dataset=args.dataset, repo_id=args.repo_id)
    except (ValueError, FileNotFoundError) as e:
        print(f'python -m training.export: error: {e}', file=sys.stderr)
        return 2
    if args.push:
        push_to_hub(exported.folder, args.repo_id or f'sentizoo/{exported.name}', dry_run=args.dry_run)
    return 0


if __name__ == '__main__':
    sys.exit(main())
