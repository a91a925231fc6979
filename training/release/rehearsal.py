"""The release rehearsal: the whole graph at toy scale on a CPU, on miniature datasets in their real formats.

``python -m training.release run --rehearsal --out DIR`` writes the nine datasets into ``DIR/data`` (8x8 JPEGs
and the real annotation files, :mod:`training.datasets.miniature`), then runs every job of the release with the
real commands and tiny settings (:func:`rehearsal_spec`): 32 px, 2 pre-training steps from a random start (no
ImageNet download), one downstream epoch of batch 4 from a random start, a few held-out images per pretext task.
Every result it produces is marked synthetic (it is no real measurement) and every card says it is a rehearsal.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Tuple

from sentizoo.models import ARCHS, TAGS

from .graph import TABLES, Spec, experiment_names

__all__ = ['REHEARSAL_ARCHS', 'PRETRAIN_ARGS', 'VERIFY_ARGS', 'write_miniature_data', 'rehearsal_spec']

REHEARSAL_ARCHS = ('resnet18',)
"""The default subset of the rehearsal (every job kind, a few minutes on 2 cores); ``--archs`` for more."""
PRETRAIN_ARGS = ('--init', 'random', '--image-size', '32', '--epochs', '1', '--steps-per-epoch', '2',
                 '--batch-size', '4', '--workers', '0', '--save-every', '1')
VERIFY_ARGS = ('--samples', '8', '--batch-size', '4', '--rehearsal')
_DOWNSTREAM = {'image_size': 32, 'batch_size': 4, 'workers': 0}


def _emotic_people() -> Dict[str, List[Tuple[str, str, List[int], List[str]]]]:
    """EMOTIC people for the three splits, every category used, one person per image."""
    from ..datasets.emotic import CATEGORIES
    sizes, people, n = {'train': 16, 'val': 4, 'test': 6}, {}, 0
    for split, size in sizes.items():
        people[split] = []
        for _ in range(size):
            categories = [CATEGORIES[n % len(CATEGORIES)], CATEGORIES[(3 * n + 1) % len(CATEGORIES)]]
            people[split].append(('mscoco/images', f'{split}_{n:04d}.jpg', [1, 2, 6, 7], categories))
            n += 1
    return people


def write_miniature_data(root: Path) -> Path:
    """The nine datasets in their real on-disk formats under ``root/<name>`` (the release's layout)."""
    from ..datasets import miniature as m
    from ..datasets.artemis import EMOTIONS

    root = Path(root)
    m.write_places365_official(root / 'places365', per_class=4, val_per_class=2)
    m.write_vso_folders(root / 'vso', {anp: 5 for anp in ('abandoned_asylum', 'angry_cat', 'beautiful_flowers',
                                                          'frail_hand')})
    rows = [(('Romanticism', 'Ukiyo_e', 'Impressionism')[a % 3], f'painter-{a}_work-{a}', EMOTIONS[(a + k) % 9],
             f'the {("warm", "cold", "dark", "bright")[(a + k) % 4]} colours make me feel {EMOTIONS[(a + k) % 9]}', 1)
            for a in range(24) for k in range(2)]
    m.write_artemis(root / 'artemis', rows)
    m.make_fi(root / 'fi', per_class=20)
    m.make_emoset(root / 'emoset')
    m.make_unbiasedemo(root / 'unbiasedemo', per_class=10)
    m.make_emotic(root / 'emotic', _emotic_people())
    m.make_emotion6(root / 'emotion6', n=30)
    m.make_abstract(root / 'abstract', n=30)
    return root


def _write_configs(folder: Path, spec: Spec) -> Path:
    """The downstream configs of ``spec`` at toy size (32 px, batch 4, one epoch, random starts), by name."""
    from ..downstream import load_config

    names = [n for arch in spec.archs for n in experiment_names(spec.tables, arch)]
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        config = load_config(name)
        config.pop('source')
        config.update(_DOWNSTREAM, train=dict(config['train'], epochs=1),
                      runs={r: dict(run, init='random' if run['init'] == 'imagenet' else run['init'])
                            for r, run in config['runs'].items()})
        (folder / f'{name}.json').write_text(json.dumps(config, indent=2) + '\n')
    return folder


def rehearsal_spec(out: Path, archs: Tuple[str, ...] = REHEARSAL_ARCHS, tags: Tuple[str, ...] = TAGS,
                   tables: Tuple[int, ...] = TABLES) -> Spec:
    """The rehearsal's :class:`Spec` under ``out``: miniature data in ``out/data`` (written when absent), toy
    settings, CPU only, the publish job as a dry run."""
    out = Path(out).resolve()
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise ValueError(f'--archs {bad}: choose among {ARCHS}')
    if not (out / 'data' / 'abstract').is_dir():
        write_miniature_data(out / 'data')
    spec = Spec(out=out, data_root=out / 'data', archs=tuple(archs), tags=tuple(tags), tables=tuple(tables), gpus=0,
                downstream_gpus=0, publish=True, dry_run=True, rehearsal=True, pretrain_args=PRETRAIN_ARGS,
                verify_args=VERIFY_ARGS)
    spec.check()
    return dataclasses.replace(spec, downstream_configs=_write_configs(out / 'configs', spec))
