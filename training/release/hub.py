"""What the manifest generates: the hub folders, the content of ``sentizoo/published.py``, and the upload.

* :func:`write_hub_folders` (the ``cards`` job): ``<out>/hub/senti_<arch>.<tag>/`` for every model the release
  exported: ``model.safetensors`` and the card written again by :func:`training.export.export` from the same
  checkpoint (the card rendered through huggingface_hub, with the model's results from the manifest in its
  ``model-index``), and ``config.json`` with the release's provenance. The weights must be the zoo's, byte for
  byte (the sha256 the manifest recorded).
* :func:`render_published`: ``sentizoo/published.py`` with the manifest's sha256 on the lines of the models it
  holds.
* :func:`publish`: one hub commit per repository, after every folder has been checked against the manifest.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from sentizoo.weights import CONFIG_NAME, read_config, sha256_file

from .graph import Job
from .manifest import write_json

__all__ = ['REHEARSAL_NOTICE', 'PublishError', 'upstream', 'provenance', 'write_hub_folders', 'hub_files', 'check_folder',
           'publish', 'render_published', 'manifest_sha256']

REHEARSAL_NOTICE = ('> **Release rehearsal.** Made by `python -m training.release run --rehearsal` from miniature '
                    'generated datasets at toy sizes: these weights and numbers test the release pipeline and mean '
                    'nothing for real images.\n')


class PublishError(ValueError):
    """A hub folder does not match the release manifest; the message names the files."""


def _arg(args: Sequence[str], flag: str) -> str:
    return args[list(args).index(flag) + 1]


def upstream(jobs: Sequence[Job], job_id: str) -> List[Job]:
    """``job_id``'s job and every job it needs, directly or not, in graph order."""
    by_id, needed, pending = {j.id: j for j in jobs}, set(), [job_id]
    while pending:
        current = pending.pop()
        if current not in needed:
            needed.add(current)
            pending += by_id[current].deps
    return [j for j in jobs if j.id in needed]


def provenance(manifest: Mapping[str, Any], jobs: Sequence[Job], name: str) -> Dict[str, Any]:
    """Where ``name`` comes from: the commands of the jobs that made it, their time, the data, the code."""
    chain = upstream(jobs, manifest['models'][name]['job'])
    records = [manifest['jobs'][j.id] for j in chain]
    read = {d for j in chain for d in j.datasets}
    return {'git_commit': manifest['git_commit'], 'versions': manifest['versions'],
            'commands': [r['command'] for r in records],
            'gpu_hours': round(sum(r['gpu_hours'] for r in records), 4),
            'wall_hours': round(sum(r['wall_seconds'] for r in records) / 3600, 4),
            'datasets': {d: f for d, f in manifest.get('datasets', {}).items() if d in read},
            'manifest': 'release.json', 'rehearsal': bool(manifest['spec'].get('rehearsal'))}


def write_hub_folders(out: Path, manifest: Mapping[str, Any], jobs: Sequence[Job]) -> List[Path]:
    """Write ``<out>/hub/<name>/`` for every model of ``manifest`` (``jobs``: the release's graph). Returns the
    folders."""
    from ..export import export

    by_id = {j.id: j for j in jobs}
    folders = []
    for name, model in manifest['models'].items():
        args = by_id[model['job']].args
        folder = Path(out) / 'hub' / name
        exported = export(_arg(args, '--checkpoint'), _arg(args, '--tag'),
                          arch=_arg(args, '--arch') if '--arch' in args else None, out=folder,
                          results=model['results'], command=model['command'])
        if exported.sha256 != model['sha256']:
            raise PublishError(f'{folder / "model.safetensors"}: sha256 {exported.sha256} differs from the zoo\'s '
                               f'{model["sha256"]} in the manifest: the checkpoint changed after its export job')
        config = read_config(folder)
        config['sentizoo_release'] = provenance(manifest, jobs, name)
        write_json(folder / CONFIG_NAME, config)
        if manifest['spec'].get('rehearsal'):
            card = folder / 'README.md'
            text = card.read_text(encoding='utf-8')
            card.write_text(text.replace(f'\n# {name}\n', f'\n# {name}\n\n{REHEARSAL_NOTICE}', 1), encoding='utf-8')
        folders.append(folder)
    return folders


def hub_files(manifest: Mapping[str, Any], name: str) -> Dict[str, str]:
    """``{file name: sha256}`` the manifest records for the hub folder of ``name``."""
    prefix = f'hub/{name}/'
    return {rel[len(prefix):]: a['sha256'] for rel, a in manifest['artefacts'].items() if rel.startswith(prefix)}


def check_folder(folder: Path, expected: Mapping[str, str]) -> List[str]:
    """The problems of ``folder`` against ``{file: sha256}``: missing, extra or different files."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file()} if folder.is_dir() else set()
    problems = [f'{folder / f}: missing' for f in sorted(set(expected) - present)]
    problems += [f'{folder / f}: not in the manifest' for f in sorted(present - set(expected))]
    problems += [f'{folder / f}: sha256 differs from the manifest' for f in sorted(present & set(expected))
                 if sha256_file(folder / f) != expected[f]]
    return problems


def publish(out: Path, manifest: Mapping[str, Any], *, org: str = 'sentizoo', dry_run: bool = False,
            api: Any = None) -> Dict[str, List[str]]:
    """Upload every hub folder of the release, one commit per repository (``<org>/<name>``); returns
    ``{repo: files}``. Every folder is checked against the manifest first: one mismatch and nothing is uploaded."""
    from ..export import push_to_hub

    names = [n for n in manifest['models'] if hub_files(manifest, n)]
    if not names:
        raise PublishError(f'{Path(out) / "release.json"} lists no hub folder: run the release (its cards job) first')
    problems = [p for n in names for p in check_folder(Path(out) / 'hub' / n, hub_files(manifest, n))]
    if problems:
        raise PublishError('refusing to publish, the hub folders do not match the manifest:\n  ' + '\n  '.join(problems)
                           + '\nrun the release again (it redoes the jobs whose files changed)')
    return {f'{org}/{n}': push_to_hub(Path(out) / 'hub' / n, f'{org}/{n}', dry_run=dry_run, api=api) for n in names}


def render_published(current: str, sha256: Mapping[str, Optional[str]]) -> str:
    """``current`` (the text of ``sentizoo/published.py``) with the sha256 of every model in ``sha256`` on its line;
    the other lines, and the docstring, stay as they are."""
    def line(match: 're.Match[str]') -> str:
        name = match.group(2)
        return f"{match.group(1)}'{name}': {sha256[name]!r}," if name in sha256 else match.group(0)
    missing = [n for n in sha256 if f"'{n}':" not in current]
    if missing:
        raise ValueError(f'sentizoo/published.py has no line for {missing}')
    return re.sub(r"^(\s+)'(senti_[\w.]+)': (?:None|'[0-9a-f]{64}'),$", line, current, flags=re.M)


def manifest_sha256(manifest: Mapping[str, Any]) -> Dict[str, str]:
    """``{name: sha256}`` of the release's models."""
    return {name: model['sha256'] for name, model in manifest['models'].items()}
