"""Model cards of the zoo: ``model_cards/template.md`` filled with the facts of one exported checkpoint.

:func:`render_card` writes every number it is given and no other: the training recipe and the
evaluation table come from the caller (the checkpoint's recorded run and result files of real
evaluations), and a card without results says so instead of quoting the paper. Results also go
into the Hugging Face ``model-index`` metadata, so the hub shows them.
"""
from __future__ import annotations

import json
from pathlib import Path
from string import Template
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['TEMPLATE', 'RESULT_KEYS', 'render_card', 'validate_results']

TEMPLATE = Path(__file__).resolve().parents[1] / 'model_cards' / 'template.md'
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


def render_card(name: str, *, repo_id: str, architecture: str, description: str,
                recipe: Sequence[Tuple[str, Any]], commands: Sequence[str],
                results: Sequence[Mapping[str, Any]] = (), synthetic: bool = False,
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
        template: a different template file (``$``-placeholders as in ``template.md``).
    """
    results = validate_results(results)
    meta: Dict[str, Any] = {'license': 'cc-by-nc-4.0', 'library_name': 'timm',
                            'tags': ['image-classification', 'timm', 'sentizoo', 'visual-sentiment-analysis'],
                            'pipeline_tag': 'image-classification'}
    if results:
        meta['model-index'] = _model_index(name, results)
    notice = ('> **Synthetic demo weights.** Trained on sentizoo\'s procedural "synthetic affect world", not on '
              'the paper\'s datasets: useful to test the pipeline, meaningless for real images.\n'
              if synthetic else '')
    text = Template(Path(template or TEMPLATE).read_text(encoding='utf-8'))
    return text.substitute(
        front_matter=_yaml(meta), name=name, repo_id=repo_id, architecture=architecture, description=description,
        synthetic_notice=notice, recipe='\n'.join(f'- {label}: {value}' for label, value in recipe),
        commands='\n'.join(commands), evaluation=_evaluation(results))
