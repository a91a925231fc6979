"""Running the job graph: on this machine (``local``) or through submitit (``slurm``; ``submitit-local``, the same
code path on this machine with ``submitit.LocalExecutor``, without sbatch).

:func:`execute` runs one job where it lands: its command in a subprocess (distributed jobs under torchrun), the
output into ``<out>/jobs/<id>/log.txt``, then the job's record (:mod:`.manifest`). :func:`run_graph` is the
driver, the same for every backend: it skips the jobs already done (verified by sha256), submits a job when its
dependencies are done (on Slurm as soon as they are submitted, with ``afterok`` dependencies), stops only the
dependents of a failed job, prints a progress line, and keeps ``release.json`` up to date. A driver killed at
any point loses nothing: the jobs write their own records, and the next driver re-attaches to the submissions
still running (``<out>/jobs/<id>/submission.json``) instead of starting them twice.

On Slurm a job that is pre-empted or reaches its time limit gets submitit's signal: :class:`JobRunner`'s
``checkpoint`` stops the command and requeues the same job, which resumes from its checkpoint (pre-training's
``--resume auto`` and ``--save-every``, the downstream runs' ``checkpoint_dir``): the project's exact resume.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .graph import Job, job_folder
from .manifest import (ROOT, git_commit, hash_outputs, inputs_of, now, read_json, read_record, verified, versions,
                       write_json, write_record)

__all__ = ['JobFailed', 'execute', 'JobRunner', 'LocalBackend', 'SubmititBackend', 'run_graph', 'EXECUTORS']

EXECUTORS = ('local', 'slurm', 'submitit-local')
LOG, ATTEMPTS, SUBMISSION = 'log.txt', 'attempts.json', 'submission.json'
_STOP_GRACE_S = 30  # how long a stopped command may take to exit on SIGTERM before SIGKILL


class JobFailed(RuntimeError):
    """A job's command failed or did not write its outputs; the message names the log."""


def _log(folder: Path, text: str) -> None:
    with open(folder / LOG, 'a') as f:
        f.write(f'[{now()}] {text}\n')


def _attempts(folder: Path) -> List[Dict[str, Any]]:
    return (read_json(folder / ATTEMPTS) or {}).get('attempts', [])


def _add_attempt(folder: Path, started: float, outcome: str) -> List[Dict[str, Any]]:
    attempts = [*_attempts(folder), {'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started)),
                                     'seconds': round(time.time() - started, 3), 'outcome': outcome}]
    write_json(folder / ATTEMPTS, {'attempts': attempts})
    return attempts


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return ' | '.join(path.read_text(errors='replace').strip().splitlines()[-lines:])
    except OSError:
        return ''


def execute(job: Job, out: Path, argv: Optional[List[str]] = None,
            started_child: Callable[[subprocess.Popen], None] = lambda child: None) -> Dict[str, Any]:
    """Run ``job`` here and write its record; returns the record. Raises :class:`JobFailed` (its record says
    ``failed``, with the reason) when the command fails or an output is missing."""
    folder = job_folder(out, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    attempt = len(_attempts(folder)) + 1
    _log(folder, f'attempt {attempt}: {job.command}')
    started = time.time()
    with open(folder / LOG, 'a') as log:
        child = subprocess.Popen(argv or job.runnable(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, 'PYTHONPATH': os.pathsep.join(
                                     p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p)})
        started_child(child)
        while child.poll() is None:  # not wait(): submitit's signal handler must be able to stop the child
            time.sleep(0.2)
        code = child.returncode
    error = None
    if code != 0:
        error = f'exit code {code}' + (f' (signal {-code})' if code < 0 else '')
    else:
        try:
            outputs = hash_outputs(out, job.outputs)
        except FileNotFoundError as e:
            error = str(e)
    attempts = _add_attempt(folder, started, error or 'done')
    seconds = sum(a['seconds'] for a in attempts)
    record: Dict[str, Any] = {
        'id': job.id, 'stage': job.stage, 'command': job.command, 'status': 'failed' if error else 'done',
        'finished': now(), 'attempts': attempts, 'wall_seconds': round(seconds, 3),
        'gpu_hours': round(seconds / 3600 * job.gpus * job.nodes, 6), 'gpus': job.gpus, 'nodes': job.nodes,
        'inputs': inputs_of(out, job), 'git_commit': git_commit(), 'versions': versions()}
    if error:
        reason = f'{job.id} failed: {error}; see {folder / LOG}: {_tail(folder / LOG)}'
        _log(folder, f'FAILED: {error}')
        write_record(out, job.id, {**record, 'outputs': {}, 'error': reason})
        raise JobFailed(reason)
    from ..model_card import validate_results
    record['outputs'] = outputs
    record['results'] = validate_results(read_json(Path(out) / job.results)['results'], job.results) if job.results else []
    _log(folder, f'done in {seconds:.1f} s')
    write_record(out, job.id, record)
    return record


def _stop(child: Optional[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL after a grace period: the command's last checkpoint is what the next attempt reads."""
    if child is None or child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class LocalBackend:
    """Each job in turn on this machine, in dependency order (distributed jobs under torchrun)."""
    dependencies = False
    name = 'local'

    def submit(self, job: Job, out: Path, after: Sequence[str]) -> '_Finished':
        try:
            execute(job, out)
        except JobFailed:
            pass  # the record says why; the driver reads it
        return _Finished()

    def attach(self, submission: Mapping[str, Any], out: Path) -> None:
        return None


class _Finished:
    job_id = 'local'

    def done(self) -> bool:
        return True

    def cancel(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------- submitit

class JobRunner:
    """What submitit runs on the node: :func:`execute` for one job, requeued on pre-emption or timeout.

    ``checkpoint`` is submitit's hook (``submitit.helpers.Checkpointable``'s protocol): it stops the command
    (its last checkpoint stays on disk), notes the attempt, and returns the same call to requeue, which resumes.
    A multi-node job runs torchrun on every node; the first node writes the record.
    """

    def __init__(self, job: Job, out: Path):
        self.job, self.out = job, Path(out)
        self._child: Optional[subprocess.Popen] = None
        self._started = 0.0

    def __call__(self) -> str:
        import submitit
        env = submitit.JobEnvironment()
        self._started = time.time()
        argv = self.job.argv(sys.executable, rdzv=f'{env.hostnames[0]}:29500') if self.job.nodes > 1 else None
        if env.global_rank != 0:  # another node of a multi-node job: its torchrun joins the rendezvous
            subprocess.run(argv, cwd=ROOT, check=True)
            return self.job.id
        execute(self.job, self.out, argv, started_child=self._remember)
        return self.job.id

    def _remember(self, child: subprocess.Popen) -> None:
        self._child = child

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission
        folder = job_folder(self.out, self.job.id)
        _stop(self._child)
        _add_attempt(folder, self._started, 'pre-empted or timed out: requeued')
        _log(folder, 'pre-empted or timed out: requeued; the next attempt resumes from the checkpoint')
        return DelayedSubmission(JobRunner(self.job, self.out), *args, **kwargs)

    def __getstate__(self) -> Dict[str, Any]:  # a running process does not travel to the requeued job
        return {'job': self.job, 'out': self.out, '_child': None, '_started': 0.0}


class _Attached:
    """A submission made by an earlier driver, still running: polled by its job id."""

    def __init__(self, backend: 'SubmititBackend', submission: Mapping[str, Any]):
        self.backend, self.job_id = backend, str(submission['job_id'])

    def done(self) -> bool:
        return not self.backend.alive(self.job_id)

    def cancel(self) -> None:
        self.backend.cancel(self.job_id)


class SubmititBackend:
    """Jobs submitted with submitit: to Slurm (``cluster='slurm'``), or to ``submitit.LocalExecutor``
    (``cluster='local'``, for testing the same path). ``options``: ``partition``, ``timeout_min``,
    ``signal_delay_s``, ``max_num_timeout``, ``cpus_per_task``, ``mem_gb`` and ``slurm_*`` extras."""

    def __init__(self, cluster: str, options: Optional[Mapping[str, Any]] = None):
        self.cluster, self.options = cluster, dict(options or {})
        self.dependencies = cluster == 'slurm'  # LocalExecutor has no scheduler: the driver waits instead
        self.name = 'slurm' if cluster == 'slurm' else 'submitit-local'

    def _executor(self, job: Job, out: Path, after: Sequence[str]) -> Any:
        import submitit
        o = self.options
        folder = job_folder(out, job.id) / 'submitit'
        if self.cluster == 'slurm':
            executor = submitit.AutoExecutor(folder=folder, cluster='slurm',
                                             slurm_max_num_timeout=o.get('max_num_timeout', 3))
        else:
            executor = submitit.LocalExecutor(folder=folder, max_num_timeout=o.get('max_num_timeout', 3))
        params: Dict[str, Any] = dict(timeout_min=o.get('timeout_min', 72 * 60), nodes=job.nodes, tasks_per_node=1,
                                      gpus_per_node=job.gpus, name=f'sentizoo.{job.id}')
        if self.cluster == 'slurm':
            params.update(cpus_per_task=o.get('cpus_per_task', 10), mem_gb=o.get('mem_gb', 64),
                          slurm_signal_delay_s=o.get('signal_delay_s', 120))
            if o.get('partition'):
                params['slurm_partition'] = o['partition']
            extra = dict(o.get('slurm_additional_parameters', {}))
            if after:
                extra['dependency'] = 'afterok:' + ':'.join(after)
            if extra:
                params['slurm_additional_parameters'] = extra
            executor.update_parameters(**params)
        else:
            executor.update_parameters(timeout_min=params['timeout_min'], gpus_per_node=job.gpus,
                                       signal_delay_s=o.get('signal_delay_s', 30))
        return executor

    def submit(self, job: Job, out: Path, after: Sequence[str]) -> Any:
        handle = self._executor(job, out, after).submit(JobRunner(job, out))
        write_json(job_folder(out, job.id) / SUBMISSION, {'job_id': str(handle.job_id), 'cluster': self.cluster,
                                                          'submitted': now()})
        return handle

    def attach(self, submission: Mapping[str, Any], out: Path) -> Optional[_Attached]:
        """The earlier driver's submission when it is still queued or running, else None."""
        if submission.get('cluster') != self.cluster or not self.alive(str(submission['job_id'])):
            return None
        return _Attached(self, submission)

    def alive(self, job_id: str) -> bool:
        if self.cluster == 'slurm':
            import submitit
            state = submitit.SlurmJob(folder='.', job_id=job_id).state
            return state.upper() in ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING', 'SUSPENDED',
                                     'UNKNOWN')
        try:  # a LocalExecutor job id is the pid of its controller
            cmdline = Path(f'/proc/{int(job_id)}/cmdline').read_bytes()
        except (OSError, ValueError):
            return False
        return b'submitit' in cmdline

    def cancel(self, job_id: str) -> None:
        if self.cluster == 'slurm':
            subprocess.run(['scancel', job_id], check=False)
        else:
            try:
                os.kill(int(job_id), signal.SIGTERM)
            except (OSError, ValueError):
                pass


# ----------------------------------------------------------------------------------------------------- driver

def _progress(jobs: Sequence[Job], state: Mapping[str, str], out: Path) -> str:
    counts = {s: sum(1 for j in jobs if state[j.id] == s) for s in ('done', 'running', 'failed', 'blocked')}
    left = len(jobs) - sum(counts.values())
    used = sum((read_record(out, j.id) or {}).get('gpu_hours', 0.0) for j in jobs if state[j.id] in ('done', 'failed'))
    return (f'release: {counts["done"]}/{len(jobs)} done, {counts["running"]} running, {left} left'
            + (f', {counts["failed"]} failed, {counts["blocked"]} stopped by a failure'
               if counts['failed'] else '') + f'; {used:.2f} GPU-hours used')


def run_graph(jobs: Sequence[Job], out: Path, backend: Any, on_change: Callable[[], None] = lambda: None,
              poll_s: float = 2.0, log: Callable[[str], None] = lambda s: print(s, flush=True)) -> Dict[str, str]:
    """Run ``jobs`` (in :func:`~.graph.build_graph` order) with ``backend``; returns ``{job id: state}``, each
    ``done``, ``failed`` or ``blocked`` (a dependency failed). ``on_change`` runs after every finished job
    (the caller rewrites the manifest there)."""
    out = Path(out)
    state: Dict[str, str] = {}
    running: Dict[str, Any] = {}
    for job in jobs:  # done: verified, and so is every job it needs (a job run again may change its inputs)
        if verified(out, job) and all(state[d] == 'done' for d in job.deps):
            state[job.id] = 'done'
            continue
        state[job.id] = 'pending'
        attached = backend.attach(read_json(job_folder(out, job.id) / SUBMISSION) or {}, out) \
            if (job_folder(out, job.id) / SUBMISSION).is_file() else None
        if attached is not None:
            state[job.id], running[job.id] = 'running', attached
            log(f'{job.id}: still running from an earlier driver (job {attached.job_id}), waiting for it')
    skipped = sum(1 for s in state.values() if s == 'done')
    if skipped:
        log(f'{skipped} job(s) already done, outputs verified by sha256: skipped')
    last = ''
    while True:
        for job in jobs:
            if state[job.id] != 'pending':
                continue
            deps = [state[d] for d in job.deps]
            if any(s in ('failed', 'blocked') for s in deps):
                state[job.id] = 'blocked'
                log(f'{job.id}: not run, a job it needs failed')
                continue
            ready = all(s == 'done' for s in deps) or (
                backend.dependencies and all(s in ('done', 'running') for s in deps))
            if ready and all(s == 'done' for s in deps) and verified(out, job):  # its inputs came back unchanged
                state[job.id] = 'done'
            elif ready:
                after = [str(running[d].job_id) for d in job.deps if state[d] == 'running']
                state[job.id] = 'running'
                log(f'{job.id}: {"submitted" if backend.name != "local" else "running"}: {job.command}')
                running[job.id] = backend.submit(job, out, after)
        for job_id, handle in list(running.items()):
            if not handle.done():
                continue
            del running[job_id]
            job = next(j for j in jobs if j.id == job_id)
            record = read_record(out, job_id) or {}
            if record.get('status') == 'done' and verified(out, job):
                state[job_id] = 'done'
            else:
                state[job_id] = 'failed'
                log(record.get('error') or f'{job_id} failed without a record (killed, out of memory or '
                                           f'cancelled); see {job_folder(out, job_id)}')
                for other in jobs:  # Slurm holds a dependent forever once its dependency failed
                    if job_id in other.deps and other.id in running:
                        running.pop(other.id).cancel()
                        state[other.id] = 'pending'
            on_change()
        line = _progress(jobs, state, out)
        if line != last:
            log(line)
            last = line
        if not running and not any(s == 'pending' for s in state.values()):
            return state
        if running and not any(h.done() for h in running.values()):
            time.sleep(poll_s)
