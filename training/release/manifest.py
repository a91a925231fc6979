"""The release manifest, ``<out>/release.json``, and the job records it is assembled from.

Each job writes its own record, ``<out>/jobs/<id>/job.json`` (atomically, from whichever machine ran it): the
command, its status, the attempts with their wall time, the GPU-hours, the sha256 of every output file, the
sha256 of the inputs it read (its dependencies' outputs), its evaluation results, the git commit and the
package versions. :func:`write_manifest` gathers the records with the release's settings and the dataset
fingerprints into ``release.json``::

    {"format": "sentizoo.release/1", "git_commit", "versions", "spec", "throughput", "datasets": {name: {...}},
     "jobs": {id: record}, "artefacts": {path: {"sha256", "job", "command"}},
     "models": {"senti_<arch>.<tag>": {"sha256", "folder", "job", "command", "results"}}}

A job is **done** when its record says so, every output it lists still has its sha256, and its inputs are the
current outputs of its dependencies (:func:`verified`): a tampered or changed file makes it run again.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

from sentizoo.weights import atomic_write, sha256_file

from .graph import Job, job_folder

__all__ = ['FORMAT', 'MANIFEST', 'RECORD', 'read_json', 'write_json', 'git_commit', 'versions', 'read_record',
           'write_record', 'verified', 'hash_outputs', 'inputs_of', 'write_manifest', 'read_manifest', 'now']

FORMAT = 'sentizoo.release/1'
MANIFEST = 'release.json'
RECORD = 'job.json'
ROOT = Path(__file__).resolve().parents[2]


def now() -> str:
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path``, or None when it is missing or unreadable (a record being replaced)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` atomically (a reader sees the old file or the new one)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + '\n'))


def git_commit() -> str:
    """The checkout's commit, with ``-dirty`` when tracked files have changes (the code the jobs ran)."""
    def git(*args: str) -> str:
        return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git('rev-parse', 'HEAD') + ('-dirty' if git('status', '--porcelain', '--untracked-files=no') else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (not a git checkout)'


def versions() -> Dict[str, str]:
    """Python and the packages the jobs run on."""
    from importlib.metadata import PackageNotFoundError, version
    found = {'python': platform.python_version()}
    for name in ('sentizoo', 'torch', 'torchvision', 'timm', 'huggingface_hub', 'safetensors', 'submitit'):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def read_record(out: Path, job_id: str) -> Optional[Dict[str, Any]]:
    return read_json(job_folder(out, job_id) / RECORD)


def write_record(out: Path, job_id: str, record: Mapping[str, Any]) -> None:
    write_json(job_folder(out, job_id) / RECORD, record)


def hash_outputs(out: Path, paths: Iterable[str]) -> Dict[str, str]:
    """``{path: sha256}`` of files relative to ``out``; FileNotFoundError names a missing one."""
    hashes = {}
    for rel in paths:
        path = Path(out) / rel
        if not path.is_file():
            raise FileNotFoundError(f'the job did not write {path}')
        hashes[rel] = sha256_file(path)
    return hashes


def inputs_of(out: Path, job: Job) -> Dict[str, str]:
    """The sha256 of every output of ``job``'s dependencies, as their records give them."""
    inputs: Dict[str, str] = {}
    for dep in job.deps:
        inputs.update((read_record(out, dep) or {}).get('outputs', {}))
    return inputs


def verified(out: Path, job: Job) -> bool:
    """Whether ``job`` is done: its record is ``done`` for this command, every output still has the recorded
    sha256, and it read the current outputs of its dependencies."""
    record = read_record(out, job.id)
    if not record or record.get('status') != 'done' or record.get('command') != job.command:
        return False
    if set(record.get('outputs', {})) != set(job.outputs) or record.get('inputs') != inputs_of(out, job):
        return False
    try:
        return hash_outputs(out, job.outputs) == record['outputs']
    except FileNotFoundError:
        return False


def write_manifest(out: Path, jobs: Sequence[Job], header: Mapping[str, Any]) -> Dict[str, Any]:
    """Gather the job records under ``out`` into ``<out>/release.json`` (``header``: spec, datasets, throughput);
    returns the manifest."""
    records = {job.id: read_record(out, job.id) for job in jobs}
    artefacts: Dict[str, Dict[str, str]] = {}
    models: Dict[str, Dict[str, Any]] = {}
    for job in jobs:
        record = records[job.id]
        if not record or record.get('status') != 'done':
            continue
        for rel, digest in record['outputs'].items():
            artefacts[rel] = {'sha256': digest, 'job': job.id, 'command': record['command']}
        if job.stage == 'export':
            weights = next(rel for rel in record['outputs'] if rel.endswith('model.safetensors'))
            models[job.model] = {'sha256': record['outputs'][weights], 'folder': str(Path(weights).parent),
                                 'job': job.id, 'command': record['command'], 'results': []}
    for job in jobs:  # the verify jobs' results belong to the model they checked
        record = records[job.id]
        if job.stage == 'verify' and record and record.get('status') == 'done' and job.model in models:
            models[job.model]['results'] = record.get('results', [])
    done = [r for r in records.values() if r and r.get('status') == 'done']
    manifest = {'format': FORMAT, 'updated': now(), 'git_commit': git_commit(), 'versions': versions(), **header,
                'totals': {'jobs': len(jobs), 'done': len(done),
                           'wall_hours': round(sum(r['wall_seconds'] for r in done) / 3600, 4),
                           'gpu_hours': round(sum(r['gpu_hours'] for r in done), 4)},
                'jobs': {job_id: record for job_id, record in records.items() if record},
                'artefacts': artefacts, 'models': models}
    write_json(Path(out) / MANIFEST, manifest)
    return manifest


def read_manifest(out: Path) -> Dict[str, Any]:
    """``<out>/release.json``; FileNotFoundError says how to make it."""
    manifest = read_json(Path(out) / MANIFEST)
    if manifest is None or manifest.get('format') != FORMAT:
        raise FileNotFoundError(f'{Path(out) / MANIFEST}: no release manifest (format {FORMAT}); run '
                                f'python -m training.release run --out {out} first')
    return manifest

