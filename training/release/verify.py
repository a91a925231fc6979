"""The verify jobs: an exported zoo entry loads through timm, equals its checkpoint, and is measured.

``python -m training.release verify --name senti_resnet50.hp --checkpoint .../final.pt --zoo ZOO --json OUT``
loads ``timm.create_model(name, pretrained=True)`` with ``SENTIZOO_HOME=ZOO`` (the sha256 check of every zoo
load), compares every tensor with the checkpoint's, then writes the evaluation records the card shows:

* a backbone (st/ho/hp): its pretext tasks on held-out images (:mod:`training.pretext_eval`), each beside its
  reference;
* a classifier (fi, ``--cell``): the test metrics of its Table 1 cell (the downstream result file).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ['PRETEXT_DATA', 'verify', 'pretext_results', 'cell_results']

PRETEXT_DATA = {'colorization': 'places365', 'super_resolution': 'places365', 'scene': 'places365',
                'jigsaw': 'places365', 'anp': 'vso', 'captioning': 'artemis'}
_LABELS = {'places365': 'Places365-Standard', 'vso': 'VSO', 'artemis': 'ArtEmis', 'synthetic': 'Synthetic'}


def pretext_results(checkpoint: Path, samples: int, batch_size: int, device: str) -> List[Dict[str, Any]]:
    """The pretext tasks of a pre-training checkpoint on held-out images, as card result records."""
    from ..pretext_eval import evaluate_pretext, load_perception_model
    from ..pretrain import HELDOUT_SPLITS

    model, heldout, train = load_perception_model(checkpoint, samples)
    synthetic = any(getattr(d, 'world', None) is not None for d in heldout.values())
    records = []
    for s in evaluate_pretext(model, heldout, train, batch_size=batch_size, device=device):
        data = 'synthetic' if synthetic else PRETEXT_DATA[s.task]
        records.append({'dataset': _LABELS[data], 'split': f'{HELDOUT_SPLITS[data]} (held out)',
                        'metric': f'{s.task} {s.metric}', 'value': round(s.value, 6),
                        'source': f'training.pretext_eval, {s.samples} images; reference ({s.reference_name}) '
                                  f'{s.reference:.4g}', 'synthetic': synthetic})
    return records


def cell_results(result_file: Path) -> List[Dict[str, Any]]:
    """The test metrics of one downstream run (``training.downstream``'s result file) as card result records."""
    from ..paper_results import DATASET_LABELS

    r = json.loads(Path(result_file).read_text())
    return [{'dataset': DATASET_LABELS.get(r['dataset'], r['dataset']), 'split': 'test', 'task': r['task'],
             'metric': metric, 'value': round(value, 6), 'source': f'training.downstream {r["experiment"]}/{r["run"]}',
             'synthetic': bool(r['synthetic'])} for metric, value in r['test'].items()]


def verify(name: str, checkpoint: Path, zoo: Path, *, cell: Optional[Path] = None, samples: int = 1000,
           batch_size: int = 64, device: Optional[str] = None, rehearsal: bool = False) -> Dict[str, Any]:
    """Check ``name`` in ``zoo`` against ``checkpoint`` and measure it; returns ``{'model', 'sha256', 'results'}``.

    ``rehearsal``: the results come from miniature data: marked synthetic (never in a model-index)."""
    import timm
    import torch

    import sentizoo  # noqa: F401  (registers senti_*)
    from sentizoo.checkpoint import read_state_dict
    from sentizoo.weights import WEIGHTS_NAME, sha256_file

    from ..export import find_prefix

    os.environ['SENTIZOO_HOME'] = str(Path(zoo).resolve())
    model = timm.create_model(name, pretrained=True)  # resolves the zoo's file and checks its sha256
    state = read_state_dict(checkpoint)
    prefix = find_prefix(state, model, '' if cell else None)
    differ = [k for k, v in model.state_dict().items() if not torch.equal(v, state[prefix + k].to(v.dtype))]
    if differ:
        raise ValueError(f'{name} in {zoo} differs from {checkpoint} in {len(differ)} tensor(s), e.g. {differ[:3]}: '
                         f'export it again')
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    results = cell_results(cell) if cell else pretext_results(checkpoint, samples, batch_size, device)
    if rehearsal:
        results = [dict(r, synthetic=True) for r in results]
    return {'model': name, 'sha256': sha256_file(Path(zoo) / name / WEIGHTS_NAME), 'results': results}
