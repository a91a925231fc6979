"""Check the datasets a release reads, with the readers training uses, and fingerprint them.

Each dataset lives in ``<data-root>/<name>`` (:data:`training.release.graph.DATA_FOLDERS`). :func:`check_datasets`
opens every split a job will read with that job's reader (``training.datasets``), so a missing or malformed file
fails here, before any GPU-hour is spent, as :class:`DatasetCheckError`: the dataset, the reader's message (the
file or folder and what was expected) and the section of docs/datasets.md that describes the layout.

A fingerprint is the number of files under the dataset's folder and the sha256 of their sorted listing with
sizes (``<relative path>\\t<bytes>`` per line; the ``splits/`` file lists that the readers write are left out):
the release manifest records it, so a result can be traced to the data it was made from.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple

from .graph import DATA_FOLDERS, Job, Spec

__all__ = ['DOC_SECTIONS', 'DatasetCheckError', 'fingerprint', 'check_datasets', 'needed_datasets', 'sizes_of']

DOC_SECTIONS = {'places365': '1. Places365-Standard', 'vso': '2. VSO / SentiBank CC images',
                'artemis': '3. ArtEmis over WikiArt', 'fi': '4. FI', 'emoset': '5. EmoSet-118K',
                'unbiasedemo': '6. UnBiasedEmo', 'emotic': '7. EMOTIC', 'emotion6': '8. Emotion6',
                'abstract': '9. Abstract paintings'}
"""The heading of docs/datasets.md that describes each dataset's layout."""
DERIVED = 'splits'  # the readers' saved split lists: written by the first run, not part of the data


class DatasetCheckError(ValueError):
    """A dataset a job needs is missing or malformed; the message names it, the file and the docs section."""


def needed_datasets(jobs: Iterable[Job]) -> Dict[str, Tuple[str, ...]]:
    """``{dataset: tasks}`` read by ``jobs`` (a downstream dataset is read with each task its cells train)."""
    needed: Dict[str, Tuple[str, ...]] = {}
    for job in jobs:
        for name in job.datasets:
            task = job.cost.get('config', '').rsplit('_', 1)[-1] if job.stage == 'downstream' else None
            needed[name] = tuple(dict.fromkeys((*needed.get(name, ()), *([task] if task else []))))
    return {name: needed[name] for name in DATA_FOLDERS if name in needed}


def _readers(name: str, root: Path, tasks: Tuple[str, ...]) -> Dict[str, Callable[[], Any]]:
    """``{split/task: build}`` of every split the release reads of dataset ``name``."""
    if name == 'places365':
        from ..datasets.places365 import Places365
        return {split: (lambda s=split: Places365(root, s)) for split in ('train', 'val')}
    if name == 'vso':
        from ..datasets.vso import VSO
        return {split: (lambda s=split: VSO(root, s)) for split in ('train', 'test')}
    if name == 'artemis':
        from ..datasets.artemis import ArtEmis
        return {split: (lambda s=split: ArtEmis(root, s)) for split in ('train', 'val')}
    from ..datasets.emotion import SPLITS, get_dataset
    return {f'{split}/{task}': (lambda s=split, t=task: get_dataset(name, root, s, task=t))
            for task in tasks or (None,) for split in SPLITS}


def fingerprint(folder: Path, progress_every: int = 100_000) -> Dict[str, Any]:
    """``{'files', 'sha256'}`` of the sorted listing of ``folder`` with sizes (``splits/`` left out)."""
    entries = []
    for parent, dirs, files in os.walk(folder):
        if Path(parent) == folder and DERIVED in dirs:
            dirs.remove(DERIVED)
        for file in files:
            path = Path(parent) / file
            entries.append(f'{path.relative_to(folder).as_posix()}\t{path.stat().st_size}\n')
            if len(entries) % progress_every == 0:
                print(f'  {folder}: {len(entries):,} files listed', file=sys.stderr, flush=True)
    digest = hashlib.sha256(''.join(sorted(entries)).encode()).hexdigest()
    return {'files': len(entries), 'sha256': digest}


def check_datasets(spec: Spec, jobs: Iterable[Job]) -> Dict[str, Dict[str, Any]]:
    """Open every split the jobs read; returns ``{dataset: {'path', 'files', 'sha256', 'samples'}}``.

    Raises :class:`DatasetCheckError` at the first dataset that is missing or that its reader refuses.
    """
    if spec.data_root is None:
        raise DatasetCheckError('--data-root is required: the folder that holds ' + ', '.join(
            f'{n}/' for n in DATA_FOLDERS) + ' (docs/datasets.md describes each layout)')
    checked: Dict[str, Dict[str, Any]] = {}
    for name, tasks in needed_datasets(jobs).items():
        root = Path(spec.data_root) / DATA_FOLDERS[name]
        where = f'docs/datasets.md, section "{DOC_SECTIONS[name]}"'
        if not root.is_dir():
            raise DatasetCheckError(f'{name}: {root} is not a folder; put the dataset there (layout: {where})')
        samples: Dict[str, int] = {}
        for split, build in _readers(name, root, tasks).items():
            try:
                samples[split.split('/')[0]] = len(build())
            except (OSError, ValueError, KeyError, IndexError) as e:  # the readers' fail-fast errors name the file
                raise DatasetCheckError(f'{name} ({split}): {e} (layout: {where})') from None
        checked[name] = {'path': str(root), **fingerprint(root), 'samples': samples}
        print(f'dataset {name}: {checked[name]["files"]:,} files, sha256 {checked[name]["sha256"][:12]}..., '
              + ', '.join(f'{s} {n:,}' for s, n in samples.items()), file=sys.stderr, flush=True)
    return checked


def sizes_of(checked: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, int]]:
    """``{dataset: {split: images}}`` of a check's result (what the estimate reads)."""
    return {name: dict(facts['samples']) for name, facts in checked.items()}
