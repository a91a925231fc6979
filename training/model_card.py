"""Model cards of the zoo: ``model_cards/template.md`` filled with the facts of one exported checkpoint.

:func:`render_card` writes every number it is given and no other: the training recipe and the
evaluation table come from the caller (the checkpoint's recorded run and result files of real
evaluations), and a card without results says so instead of quoting the paper. Results also go
into the Hugging Face ``model-index`` metadata, so the hub shows them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from string import Template
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['TEMPLATE', 'CARDS', 'RESULT_KEYS', 'TASK_NAMES', 'render_card', 'planned_card', 'pretrain_recipe',
           'validate_results',
           'main']

CARDS = Path(__file__).resolve().parents[1] / 'model_cards'
TEMPLATE = CARDS / 'template.md'
TASK_NAMES = {'st': 'colorization + super-resolution', 'ho': 'scene recognition + jigsaw puzzles',
              'hp': 'ANP classification + affective captioning'}
_DATA = {'places365': 'Places365-Standard train split (1,803,460 images, 365 scene classes)',
         'vso+artemis': 'VSO/SentiBank CC images (ANP classes = the ANP folders found) + ArtEmis utterances over '
                        'WikiArt (split 85/5/10 by painting, seed 2021)'}
_NOTICES = {
    'synthetic': '> **Synthetic demo weights.** Trained on sentizoo\'s procedural "synthetic affect world", not on '
                 'the paper\'s datasets: useful to test the pipeline, meaningless for real images.\n',
    'planned': '> **Not published yet.** No checkpoint of this name has been trained by the sentizoo project so '
               'far; this card describes the recipe that will produce it, and `pretrained=True` works only with '
               'weights you train and export yourself (commands below).\n',
}
RESULT_KEYS = {'dataset': 'dataset name, e.g. "FI"', 'metric': 'metric name, e.g. "accuracy"',
               'value': 'the number the evaluation produced'}
_OPTIONAL_KEYS = ('split', 'task', 'dataset_type', 'source', 'synthetic')
_TASK_TYPES = {'sll': 'image-classification', 'mll': 'image-classification', 'ldl': 'image-classification'}


def validate_results(results: Sequence[Mapping[str, Any]], origin: str = 'results') -> List[Dict[str, Any]]:
    """Check evaluation results: each a mapping with ``dataset``, ``metric`` and a numeric ``value``.

    Optional keys: ``split`` (e.g. "test"), ``task`` (sll/mll/ldl), ``dataset_type``, ``source`` (the
    run that produced it), ``synthetic`` (true for the synthetic affect world).
    """
    checked = []
    for i, r in enumerate(results):
        missing = [k for k in RESULT_KEYS if k not in r]
        unknown = sorted(set(r) - set(RESULT_KEYS) - set(_OPTIONAL_KEYS))
        if missing or unknown or isinstance(r.get('value'), bool) or not isinstance(r.get('value'), (int, float)):
            raise ValueError(f'{origin}[{i}] = {dict(r)!r}: expected keys {sorted(RESULT_KEYS)} (value a number) '
                             f'and optionally {list(_OPTIONAL_KEYS)}'
                             + (f'; missing {missing}' if missing else '')
                             + (f'; unknown {unknown}' if unknown else ''))
        checked.append(dict(r))
    return checked


def _fmt(value: Any) -> str:
    return f'{value:.4g}' if isinstance(value, float) else str(value)


def pretrain_recipe(config: Mapping[str, Any], *, data: str, init: str, schedule: str) -> List[Tuple[str, Any]]:
    """The facts every pre-training card lists first (tasks, data, initialisation, optimiser, schedule).

    ``config`` holds the :class:`training.pretrain.PretrainConfig` fields (``lr_step`` resolved).
    """
    c = config
    return [('Pretext tasks', f"{TASK_NAMES.get(c['model'], c['model'])} (losses summed; one loader per task, "
                              f"the shorter one cycled)"),
            ('Data', data),
            ('Backbone initialisation', init),
            ('Optimiser', f"SGD lr {_fmt(c['lr'])}, momentum {_fmt(c['momentum'])}, weight decay "
                          f"{_fmt(c['weight_decay'])}; lr x{_fmt(c['lr_gamma'])} every {c['lr_step']} epochs"),
            ('Schedule', schedule)]


def _yaml(value: Any, indent: int = 0) -> str:
    """A small YAML emitter for the card's front matter (dicts, lists, scalars; strings JSON-quoted)."""
    pad = ' ' * indent
    if isinstance(value, Mapping):
        lines = []
        for k, v in value.items():
            if isinstance(v, (Mapping, list)) and v:
                lines.append(f'{pad}{k}:\n{_yaml(v, indent + 2)}')
            else:
                lines.append(f'{pad}{k}: {_yaml(v)}')
        return '\n'.join(lines)
    if isinstance(value, list):
        if not value:
            return '[]'
        items = []
        for v in value:
            body = _yaml(v, indent + 2)
            items.append(f'{pad}- {body[indent + 2:]}' if isinstance(v, (Mapping, list)) else f'{pad}- {body}')
        return '\n'.join(items)
    return json.dumps(value)


def _model_index(name: str, results: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    grouped: Dict[Tuple, Dict[str, Any]] = {}
    for r in results:
        dataset = {'name': r['dataset'] + (' (synthetic)' if r.get('synthetic') else ''),
                   'type': r.get('dataset_type', r['dataset'].lower())}
        if r.get('split'):
            dataset['split'] = r['split']
        key = (r.get('task'), json.dumps(dataset, sort_keys=True))
        entry = grouped.setdefault(key, {'task': {'type': _TASK_TYPES.get(r.get('task'), 'image-classification')},
                                         'dataset': dataset, 'metrics': []})
        entry['metrics'].append({'type': r['metric'], 'value': r['value']})
    return [{'name': name, 'results': list(grouped.values())}]


def _evaluation(results: Sequence[Mapping[str, Any]]) -> str:
    if not results:
        return ('No evaluation has been recorded for this checkpoint. Evaluate it with the downstream '
                'experiments (`python -m training.downstream`) and export again with `--results`.')
    rows = ['| Dataset | Split | Task | Metric | Value | Source |', '|---|---|---|---|---|---|']
    for r in results:
        dataset = r['dataset'] + (' (synthetic)' if r.get('synthetic') else '')
        rows.append(f"| {dataset} | {r.get('split', '')} | {r.get('task', '')} | {r['metric']} | {r['value']} "
                    f"| {r.get('source', '')} |")
    return '\n'.join(rows)


def _loading(name: str, repo_id: str, architecture: str) -> str:
    """How the published files load: with stock timm for the ResNets; the VGGs need sentizoo for their head."""
    if architecture.startswith('vgg'):
        return (f"`config.json` names `{name.split('.')[0]}`: timm's {architecture} convolutional features with the "
                "paper's head (global average pooling and one `Linear(512, classes)`, `sentizoo.models.PaperVGG`) "
                "instead of timm's fc6/fc7 `ConvMlp`, which stock timm's architecture cannot do without. "
                f"`timm.create_model('hf-hub:{repo_id}', pretrained=True)` therefore needs `import sentizoo` first.")
    return (f"`config.json` names the stock timm architecture (`{architecture}`), so "
            f"`timm.create_model('hf-hub:{repo_id}', pretrained=True)` also works without `import sentizoo`.")


def render_card(name: str, *, repo_id: str, architecture: str, description: str,
                recipe: Sequence[Tuple[str, Any]], commands: Sequence[str],
                results: Sequence[Mapping[str, Any]] = (), synthetic: bool = False, planned: bool = False,
                template: Optional[Path] = None) -> str:
    """The model card (Markdown with HF metadata) of ``name`` (``'senti_resnet50.hp'``).

    Args:
        name: tagged model name.
        repo_id: Hugging Face repo the weights are (or will be) published in.
        architecture: the stock timm architecture (``'resnet50'``).
        description: one paragraph saying what the checkpoint is.
        recipe: ``(label, value)`` facts of the training run, rendered as a list in this order.
        commands: the shell commands that produced the files (pre-training, export).
        results: evaluation results (see :func:`validate_results`); the only numbers in the table.
        synthetic: the weights come from the synthetic demo world, not the paper's datasets.
        planned: no checkpoint exists yet; the recipe is the one that will produce it.
        template: a different template file (``$``-placeholders as in ``template.md``).
    """
    results = validate_results(results)
    meta: Dict[str, Any] = {'license': 'cc-by-nc-4.0', 'library_name': 'timm',
                            'tags': ['image-classification', 'timm', 'sentizoo', 'visual-sentiment-analysis'],
                            'pipeline_tag': 'image-classification'}
    if results:
        meta['model-index'] = _model_index(name, results)
    notice = ''.join(_NOTICES[k] for k, on in (('synthetic', synthetic), ('planned', planned)) if on)
    text = Template(Path(template or TEMPLATE).read_text(encoding='utf-8'))
    return text.substitute(
        front_matter=_yaml(meta), name=name, repo_id=repo_id, architecture=architecture, description=description,
        notice=notice, loading=_loading(name, repo_id, architecture), recipe='\n'.join(f'- {label}: {value}' for label, value in recipe),
        commands='\n'.join(commands), evaluation=_evaluation(results))


def _planned_recipe(arch: str, tag: str) -> Tuple[List[Tuple[str, Any]], List[str]]:
    """(facts, commands) of the recipe that produces ``senti_<arch>.<tag>``, read from the training code's defaults."""
    from sentizoo.models import imagenet_name

    from .downstream import load_config
    from .pretrain import DATASETS, SCHEDULES, PretrainConfig

    if tag in TASK_NAMES:
        c = PretrainConfig(model=tag, arch=arch)  # the field defaults; the schedule depends on the model
        epochs, step, batch = SCHEDULES[tag]
        out = f'runs/pretrain/{tag}_{arch}'
        facts = pretrain_recipe(
            {**dataclasses.asdict(c), 'lr_step': step}, data=_DATA[DATASETS[tag][0]],
            init=f"ImageNet: torchvision's weights, timm's {imagenet_name(arch)}",
            schedule=f'{epochs} epochs; batch {batch} per task and GPU (the paper: 2 GPUs); '
                     f'{c.image_size} px crops of {c.image_size * 256 // 224} px images, horizontal flip')
        facts.append(('Seed', c.seed))
        commands = [f'torchrun --nproc_per_node 2 -m training.pretrain --model {tag} --arch {arch} --data-root DATA '
                    f'--out-dir {out}',
                    f'python -m training.export --checkpoint {out}/final.pt --tag {tag}']
        return facts, commands
    experiment = f'table1_{arch}_{tag}_sll'
    c = load_config(experiment)
    t = c['train']
    facts = [('Method', f'amalgamation: the target starts from senti_{arch}.hp and trains beside the ST, HO and HP '
                        'teachers (feature MSE at stages 1-3, logits MSE with HP, task loss on all four models)'),
             ('Data', f'{tag.upper()}, seeded split saved as a file list; the epoch is selected on validation'),
             ('Optimiser', f"SGD lr {t['lr']}, momentum {t['momentum']}, weight decay {t['weight_decay']}; "
                           f"lr x{t['gamma']} every {t['step_size']} epochs"),
             ('Schedule', f"{t['epochs']} epochs; batch {c['batch_size']}; {c['image_size']} px crops, flip"),
             ('Seed', t['seed'])]
    commands = [f'python -m training.downstream --config {experiment} --data-root DATA --zoo ZOO',
                f'python -m training.export --checkpoint results/{experiment}/amalgamation/best.safetensors '
                f'--tag {tag} --arch {arch}']
    return facts, commands


def planned_card(name: str) -> str:
    """The card of ``senti_<arch>.<tag>`` before its checkpoint exists: the recipe, how to run it, no numbers."""
    import timm
    from sentizoo.models import stock_name

    cfg = timm.models.get_pretrained_cfg(name)
    facts, commands = _planned_recipe(stock_name(name), cfg.tag)
    return render_card(name, repo_id=cfg.hf_hub_id, architecture=stock_name(name), description=cfg.description,
                       recipe=facts, commands=commands, planned=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m training.model_card [--out model_cards/]``: write the card of every zoo entry not yet published."""
    import argparse

    import sentizoo

    parser = argparse.ArgumentParser(prog='python -m training.model_card', description=main.__doc__)
    parser.add_argument('--out', type=Path, default=CARDS, help='folder for <arch>.<tag>.md (default: model_cards/)')
    args = parser.parse_args(argv)
    names = sentizoo.list_models(pretrained=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (args.out / f'{name}.md').write_text(planned_card(name), encoding='utf-8')
    print(f'wrote {len(names)} cards to {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
