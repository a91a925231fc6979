"""Model cards of the zoo: ``model_cards/template.md`` filled with the facts of one exported checkpoint.

:func:`render_card` writes every number it is given and no other: the training recipe and the
evaluation table come from the caller (the checkpoint's recorded run and result files of real
evaluations), and a card without results says so instead of quoting the paper. Results also go
into the Hugging Face ``model-index`` metadata, so the hub shows them.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from functools import lru_cache
from string import Template
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from sentizoo.models import ARCHS, BACKBONE_TAGS, paper_arch, stock_name

__all__ = ['TEMPLATE', 'CARDS', 'RESULT_KEYS', 'TASK_NAMES', 'SYNTHETIC_DATA', 'render_card', 'planned_card',
           'pretrain_recipe', 'validate_results', 'model_stats', 'main']

CARDS = Path(__file__).resolve().parents[1] / 'model_cards'
TEMPLATE = CARDS / 'template.md'
TASK_NAMES = dict(zip(BACKBONE_TAGS, ('colorization + super-resolution', 'scene recognition + jigsaw puzzles',
                                     'ANP classification + affective captioning')))
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


def _eval_results(results: Sequence[Mapping[str, Any]]) -> list:
    """The ``model-index`` entries (huggingface_hub ``EvalResult``) of the measured results: synthetic ones never."""
    from huggingface_hub import EvalResult
    return [EvalResult(task_type=_TASK_TYPES.get(r.get('task'), 'image-classification'), dataset_name=r['dataset'],
                       dataset_type=r.get('dataset_type', r['dataset'].lower()), dataset_split=r.get('split'),
                       metric_type=r['metric'], metric_value=r['value'])  # the source is in the card's table
            for r in results if not r.get('synthetic')]


@lru_cache(maxsize=None)
def model_stats(name: str, num_classes: int, image_size: int) -> Tuple[float, float]:
    """(parameters in millions, GMACs of one ``image_size`` image) of ``name``, counted on the meta device: no
    memory, no weights (FLOPs of matmuls and convolutions / 2)."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device('meta'):
        model = timm.create_model(paper_arch(stock_name(name)), num_classes=num_classes).eval()
        images = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model(images)
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / 2e9


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


_CLASSIFY = """### Image classification

```python
import sentizoo, timm, torch
from PIL import Image

model = timm.create_model('{name}', pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
with torch.no_grad():
    probabilities = model(transform(Image.open('photo.jpg').convert('RGB')).unsqueeze(0)).softmax(-1)[0]
labels = model.pretrained_cfg['label_names']
for probability, index in zip(*probabilities.topk(3)):
    print(labels[index], float(probability))
```"""
_FINETUNE = """### Fine-tuning a classifier

A backbone (`num_classes=0`, no classifier): `timm.create_model('{name}', pretrained=True, num_classes=8)`
gives it a new head to fine-tune; or train your target beside it as a teacher (`sentizoo.amalgamate`,
`sentizoo amalgamate`)."""
_DATASETS = {'st': ('Places365-Standard', ['places365']), 'ho': ('Places365-Standard', ['places365']),
             'hp': ('VSO/SentiBank CC images + ArtEmis over WikiArt', ['vso', 'artemis']),
             'fi': ('FI (Flickr & Instagram, 8 emotions)', ['fi'])}
SYNTHETIC_DATA = "sentizoo's synthetic affect world (procedural images, not a real dataset)"


def render_card(name: str, *, repo_id: str, architecture: str, description: str,
                recipe: Sequence[Tuple[str, Any]], commands: Sequence[str],
                results: Sequence[Mapping[str, Any]] = (), synthetic: bool = False, planned: bool = False,
                num_classes: int = 0, image_size: int = 224, base_model: Optional[str] = None,
                datasets: Optional[Tuple[str, Sequence[str]]] = None, template: Optional[Path] = None) -> str:
    """The model card (Markdown with Hugging Face metadata, built with ``huggingface_hub.ModelCard``) of ``name``
    (``'senti_resnet50.hp'``).

    Args:
        name: tagged model name.
        repo_id: Hugging Face repo the weights are (or will be) published in.
        architecture: the stock timm architecture (``'resnet50'``).
        description: one paragraph saying what the checkpoint is.
        recipe: ``(label, value)`` facts of the training run, rendered as a list in this order.
        commands: the shell commands that produced the files (pre-training, export).
        results: evaluation results (see :func:`validate_results`); the only numbers in the table, and the
            ``model-index`` (synthetic ones stay out of it).
        synthetic: the weights come from the synthetic demo world, not the paper's datasets.
        planned: no checkpoint exists yet; the recipe is the one that will produce it.
        num_classes: the classifier's outputs; 0 for a backbone (``image-feature-extraction``).
        image_size: the input size of the weights (the model stats are counted at it).
        base_model: the hub id of the weights these started from, if any.
        datasets: the training data as (text for the card, hub dataset ids); default: the tag's (FI for ``fi``).
        template: a different template file (``$``-placeholders as in ``template.md``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    results = validate_results(results)
    dataset, dataset_ids = ((SYNTHETIC_DATA, []) if synthetic else datasets
                            or _DATASETS.get(name.split('.')[-1], ('', [])))
    pipeline = 'image-classification' if num_classes else 'image-feature-extraction'
    evaluated = _eval_results(results)
    data = ModelCardData(license='cc-by-nc-4.0', library_name='timm', pipeline_tag=pipeline,
                         tags=[pipeline, 'timm', 'sentizoo', 'visual-sentiment-analysis'],
                         datasets=dataset_ids or None, base_model=base_model,
                         model_name=name if evaluated else None, eval_results=evaluated or None)
    notice = ''.join(_NOTICES[k] for k, on in (('synthetic', synthetic), ('planned', planned)) if on)
    params, gmacs = model_stats(name, num_classes, image_size)
    # timm's registry knows the zoo's names; a backbone of another architecture loads from its repository
    registered = name if stock_name(name) in ARCHS else f'hf-hub:{repo_id}'
    kind = f'Image classification ({num_classes} classes)' if num_classes else 'Image feature backbone'
    text = Template(Path(template or TEMPLATE).read_text(encoding='utf-8')).substitute(
        front_matter=data.to_yaml(), name=name, model_id=registered, repo_id=repo_id, architecture=architecture,
        description=description,
        notice=notice, loading=_loading(name, repo_id, architecture), model_type=kind,
        architecture_line=_architecture_line(architecture), params=f'{params:.2f}', gmacs=f'{gmacs:.2f}',
        image_size=image_size, datasets=dataset or 'see the recipe below',
        classification=(_CLASSIFY if num_classes else _FINETUNE).format(name=registered),
        recipe='\n'.join(f'- {label}: {value}' for label, value in recipe),
        commands='\n'.join(commands), evaluation=_evaluation(results))
    return str(ModelCard(text))  # parsed and checked by huggingface_hub


def _architecture_line(architecture: str) -> str:
    if architecture.startswith('vgg'):
        return (f"timm's `{architecture}` convolutional features + the paper's head (global average pooling, one "
                "linear layer)")
    return f"timm's `{architecture}`"


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
    arch = stock_name(name)
    facts, commands = _planned_recipe(arch, cfg.tag)
    return render_card(name, repo_id=cfg.hf_hub_id, architecture=arch, description=cfg.description,
                       recipe=facts, commands=commands, planned=True, num_classes=cfg.num_classes,
                       base_model=base_model(arch, cfg.tag, "ImageNet: timm's"))


def base_model(arch: str, tag: str, init: str) -> Optional[str]:
    """The hub id of the weights ``senti_<arch>.<tag>`` starts from: the HP backbone for a classifier, the
    ImageNet weights for a backbone pre-trained from them (``init`` says so, and names their hub repository when
    ``training.pretrain`` recorded it; else the paper's, torchvision's), else None."""
    from sentizoo.models import imagenet_name

    if tag not in BACKBONE_TAGS:
        return f'sentizoo/senti_{arch}.hp'
    if 'ImageNet' not in init or 'file' in init:
        return None
    recorded = re.search(r'\btimm/[\w.-]+', init)
    return recorded.group(0) if recorded else f'timm/{imagenet_name(arch)}'


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
