"""The protocol of the confirmatory study (:mod:`training.confirm`): the file that fixes every choice before any run
(``training/configs/study/confirm.json``, explained in docs/confirmatory_study.md), its checks (the sizes it promises,
seeds no earlier config used) and the test runs it plans.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple

from sentizoo.models import BACKBONE_TAGS

__all__ = ['PROTOCOL', 'TEACHER_ZOOS', 'MINIMUMS', 'ProtocolError', 'load_protocol', 'validate_protocol',
           'earlier_seeds', 'protocol_seeds', 'planned_cells']

PROTOCOL = Path(__file__).parent / 'configs' / 'study' / 'confirm.json'
TEACHER_ZOOS = ('pretrained', 'random', 'hp')
"""The zoos of a teacher set an arm's teachers come from (``null``: an arm without teachers)."""
MINIMUMS = {'teacher_sets': 3, 'test_seeds': 5, 'n_test': 5000}
"""What the protocol must at least hold (``--quick`` shrinks the sizes, never the protocol file)."""
_REQUIRED = ('arch', 'image_size', 'hypotheses', 'teacher_sets', 'pretrain', 'pretext_eval', 'downstream',
             'analysis')


class ProtocolError(ValueError):
    """The protocol file is invalid; the message lists every problem."""


def load_protocol(path: Path = PROTOCOL, quick: bool = False) -> Dict[str, Any]:
    """The protocol at ``path``, validated; ``quick`` merges its ``quick`` section (toy sizes, the first
    ``max_teacher_sets`` sets) over it after the protocol itself has been checked."""
    from .downstream import merge_config
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ProtocolError(f'{path}: {e}') from None
    smaller = dict(config.pop('quick', {}))
    validate_protocol(config, str(path))
    if quick:
        keep = smaller.pop('max_teacher_sets', None)
        config = merge_config(config, smaller)
        if keep:
            config['teacher_sets'] = dict(list(config['teacher_sets'].items())[:keep])
    config.update(source=str(path), size='quick' if quick else 'protocol')
    return config


def protocol_seeds(config: Mapping[str, Any]) -> List[int]:
    """Every seed the protocol uses: pre-training and random teachers of each set, the test and development
    seeds of the downstream worlds."""
    seeds = [s for teacher_set in config['teacher_sets'].values() for kind in ('pretrain', 'random')
             for s in teacher_set[kind].values()]
    return seeds + list(config['downstream']['test_seeds']) + [config['downstream']['development_seed']]


def earlier_seeds(folder: Path = PROTOCOL.parent.parent, exclude: Path = PROTOCOL) -> Dict[int, List[str]]:
    """``{seed: [config files]}`` of every ``seed``/``seeds`` value in the configs under ``folder`` (the
    exploratory study, the demo, the experiments), except ``exclude``."""
    found: Dict[int, List[str]] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ('seed', 'seeds'):
                    for seed in value if isinstance(value, list) else [value]:
                        found.setdefault(seed, []).append(where)
                walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for path in sorted(Path(folder).rglob('*.json')):
        if path.resolve() != Path(exclude).resolve():
            walk(json.loads(path.read_text()), path.name)
    return found


def validate_protocol(config: Mapping[str, Any], source: str = 'protocol') -> None:
    """Check that the protocol fixes everything the study needs, at the sizes it promises, with fresh seeds;
    raises :class:`ProtocolError` listing every problem."""
    problems = [f'missing required key "{key}"' for key in _REQUIRED if key not in config]
    if problems:
        raise ProtocolError(f'{source}: invalid protocol:\n  - ' + '\n  - '.join(problems))
    d, sets = config['downstream'], config['teacher_sets']
    if len(sets) < MINIMUMS['teacher_sets']:
        problems.append(f'teacher_sets: at least {MINIMUMS["teacher_sets"]} independent sets, got {len(sets)}')
    for name, teacher_set in sets.items():
        for kind in ('pretrain', 'random'):
            if set(teacher_set.get(kind, {})) != set(BACKBONE_TAGS):
                problems.append(f'teacher_sets.{name}.{kind}: one seed for each of {list(BACKBONE_TAGS)}')
    if len(d['test_seeds']) < MINIMUMS['test_seeds']:
        problems.append(f'downstream.test_seeds: at least {MINIMUMS["test_seeds"]}, got {len(d["test_seeds"])}')
    if d['development_seed'] in d['test_seeds']:
        problems.append('downstream.development_seed: tuning must not see a test seed')
    if d['development_teacher_set'] not in sets:
        problems.append(f'downstream.development_teacher_set: one of {list(sets)}')
    if problems:  # the seed checks below read these fields
        raise ProtocolError(f'{source}: invalid protocol:\n  - ' + '\n  - '.join(problems))
    seeds = protocol_seeds(config)
    if len(set(seeds)) != len(seeds):
        problems.append('seeds: every seed of the protocol is used once')
    reused = {s: files for s, files in earlier_seeds().items() if s in set(seeds)}
    if reused:
        problems.append(f'seeds already used by earlier configs: {reused}; a confirmatory run needs fresh ones')
    for name, spec in d['experiments'].items():
        if spec['data']['n_test'] < MINIMUMS['n_test']:
            problems.append(f'downstream.experiments.{name}.data.n_test: at least {MINIMUMS["n_test"]}')
        problems += [f'downstream.experiments.{name}.arms: unknown arm {arm!r}' for arm in spec['arms']
                     if arm not in d['arms']]
    for name, arm in d['arms'].items():
        if arm['teachers'] not in (None, *TEACHER_ZOOS):
            problems.append(f'downstream.arms.{name}.teachers: null or one of {TEACHER_ZOOS}')
        if not set(arm.get('seeds', d['test_seeds'])) <= set(d['test_seeds']):
            problems.append(f'downstream.arms.{name}.seeds: a subset of the test seeds')
    h = config['hypotheses']
    for i, hypothesis in enumerate([h['primary'], *h.get('secondary', []), *h.get('descriptive', [])]):
        arms = d['experiments'].get(hypothesis['experiment'], {}).get('arms', [])
        if hypothesis['arm'] not in arms or hypothesis['versus'] not in arms:
            problems.append(f'hypotheses[{i}]: {hypothesis["arm"]} and {hypothesis["versus"]} must both be arms of '
                            f'experiment {hypothesis["experiment"]!r}')
    if 'decision_rule' not in config['analysis'] or 'bootstrap' not in config['analysis']:
        problems.append('analysis: needs "bootstrap" (replicates, seed, interval) and "decision_rule"')
    if problems:
        raise ProtocolError(f'{source}: invalid protocol:\n  - ' + '\n  - '.join(problems))


def planned_cells(config: Mapping[str, Any]) -> Iterator[Tuple[str, str, int, str]]:
    """``(experiment, teacher set, seed, arm)`` of every test run, in the order they run: experiment by
    experiment (the primary first), cell by cell."""
    d = config['downstream']
    for experiment, spec in d['experiments'].items():
        for teacher_set in config['teacher_sets']:
            for seed in d['test_seeds']:
                for arm in spec['arms']:
                    if seed in d['arms'][arm].get('seeds', d['test_seeds']):
                        yield experiment, teacher_set, seed, arm
