"""training.release (the subpackage, one section per module): the dataset check, the graph, the estimate, the
records and manifest, the executors (local and submitit's LocalExecutor, the Slurm code path without sbatch), the
hub folders, published.py and the upload against a fake hub, and a small rehearsal end to end.

Jobs other than the rehearsal's run ``release_fake_job.py`` (a resumable count of steps): what the driver does
around a command does not depend on the command.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from training.release import __main__ as cli
from training.release.datasets_check import DatasetCheckError, check_datasets
from training.release.estimate import PUBLIC_ANCHOR, load_throughput
from training.release.executors import JobFailed, LocalBackend, SubmititBackend, execute, run_graph
from training.release.graph import STAGES, Job, Spec, build_graph, job_folder
from training.release.hub import PublishError, publish, render_published
from training.release.manifest import read_manifest, read_record, write_manifest
from training.release.rehearsal import write_miniature_data

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def fake_job_importable(monkeypatch):
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(TESTS), os.environ.get('PYTHONPATH', '')]))


def fake(job_id, out, deps=(), steps=1, sleep=0.0, fail=False, needs=None):
    """A job running release_fake_job.py into ``<out>/<id>.txt`` (reading ``needs``' output when given)."""
    args = ['--out', str(Path(out) / f'{job_id}.txt'), '--steps', str(steps), '--sleep', str(sleep)]
    args += ['--input', str(Path(out) / f'{needs}.txt')] if needs else []
    return Job(job_id, 'pretrain', 'release_fake_job', tuple(args + ['--fail'] * fail), deps=tuple(deps),
               outputs=(f'{job_id}.txt',))


def snapshot(out, job_ids):
    return {j: (job_folder(out, j) / 'log.txt').read_text() + (job_folder(out, j) / 'job.json').read_text()
            for j in job_ids}


# ------------------------------------------------------------------------------------------- datasets_check

@pytest.fixture(scope='module')
def miniature(tmp_path_factory):
    return write_miniature_data(tmp_path_factory.mktemp('data'))


def _break(root: Path, dataset: str) -> str:
    """Break one file or folder of ``dataset``; returns the name the error must give."""
    d = root / dataset
    if dataset == 'places365':
        (d / 'places365_train_standard.txt').write_text('/a/airfield/00000001.jpg not-a-number\n')
        return 'places365_train_standard.txt'
    if dataset == 'vso':
        shutil.rmtree(d)
        return str(d)
    if dataset == 'artemis':
        (d / 'artemis_dataset_release_v0.csv').unlink()
        return 'artemis'
    if dataset == 'fi':
        shutil.rmtree(d / 'emotion_dataset' / 'awe')
        return 'awe'
    if dataset == 'emotic':
        (d / 'emotic_pre' / 'test.csv').unlink()
        return 'test.csv'
    if dataset == 'emotion6':
        (d / 'ground_truth.txt').write_text('header\nanger/1.jpg\t5\n')
        return 'ground_truth.txt'
    (d / 'testImages_abstract' / 'ABSTRACT_groundTruth.csv').unlink()
    return 'ABSTRACT_groundTruth.csv'


@pytest.mark.parametrize('dataset', ['places365', 'vso', 'artemis', 'fi', 'emotic', 'emotion6', 'abstract'])
def test_dataset_check_fails_fast_naming_the_file_and_the_docs(tmp_path, miniature, dataset, capsys):
    root = shutil.copytree(miniature, tmp_path / 'data')
    name = _break(root, dataset)
    spec = Spec(out=tmp_path / 'out', data_root=root, archs=('resnet18',))
    with pytest.raises(DatasetCheckError) as error:
        check_datasets(spec, build_graph(spec))
    assert str(error.value).startswith(f'{dataset}') and name in str(error.value)
    assert 'docs/datasets.md, section' in str(error.value)
    code = cli.main(['plan', '--data-root', str(root), '--archs', 'resnet18', '--out', str(tmp_path / 'out')])
    assert code == 2 and name in capsys.readouterr().err


def test_dataset_check_fingerprints_what_it_read(tmp_path, miniature):
    spec = Spec(out=tmp_path, data_root=miniature, archs=('resnet18',), tags=('st',), tables=())
    checked = check_datasets(spec, build_graph(spec))
    assert list(checked) == ['places365']  # only what the selected jobs read
    files = [p for p in (miniature / 'places365').rglob('*') if p.is_file()]
    assert checked['places365']['files'] == len(files) and checked['places365']['samples'] == {'train': 24, 'val': 12}
    again = check_datasets(spec, build_graph(spec))['places365']['sha256']
    (miniature / 'places365' / 'extra.txt').write_text('x')
    try:
        assert again == checked['places365']['sha256'] != check_datasets(spec, build_graph(spec))['places365']['sha256']
    finally:
        (miniature / 'places365' / 'extra.txt').unlink()


# --------------------------------------------------------------------------------------------------- graph

def test_graph_order_and_dependencies(tmp_path):
    jobs = build_graph(Spec(out=tmp_path, data_root=tmp_path, publish=True))
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids)) == 15 * 3 + 30 + 1 + 5 + 5 * 2 + 3  # pretrain/export/verify, cells, ablations
    position = {j: i for i, j in enumerate(ids)}
    assert all(position[d] < position[j.id] for j in jobs for d in j.deps)  # every input comes first
    stages = [j.stage for j in jobs if not j.id.startswith(('export.fi', 'verify.fi'))]
    assert stages == sorted(stages, key=STAGES.index)  # pretrain -> export -> verify -> downstream -> ... -> publish
    fi = [j.id for j in jobs if j.id.startswith(('export.fi', 'verify.fi'))]
    assert min(position[j] for j in fi) > max(position[j.id] for j in jobs if j.stage == 'downstream')
    by_id = {j.id: j for j in jobs}
    assert by_id['downstream.table1_vgg16_bn_emotic_mll'].deps == tuple(f'verify.{t}_vgg16_bn' for t in ('st', 'ho', 'hp'))
    assert by_id['export.fi_resnet50'].deps == ('downstream.table1_resnet50_fi_sll',)
    assert 'downstream.table3_resnet50_fi_sll' in by_id and 'downstream.table3_resnet18_fi_sll' not in by_id
    assert by_id['publish'].deps == ('cards', 'report') and len(by_id['cards'].deps) == 20
    pretrain = by_id['pretrain.hp_resnet101']
    assert pretrain.datasets == ('vso', 'artemis') and pretrain.gpus == 8 and '--resume auto' in pretrain.command
    assert pretrain.command.startswith('torchrun --standalone --nproc-per-node 8 -m training.pretrain')
    with pytest.raises(ValueError, match='st, ho and hp'):
        Spec(out=tmp_path, tags=('st', 'fi')).check()


# ------------------------------------------------------------------------------------------------ estimate

def test_estimate_reads_gpu_json_else_the_public_anchor(tmp_path, capsys):
    assert load_throughput(tmp_path / 'none.json') is PUBLIC_ANCHOR and 'A100' in PUBLIC_ANCHOR.source
    (tmp_path / 'gpu.json').write_text(json.dumps({
        'device': 'NVIDIA H100', 'date': '2030-01-01', 'arch': 'resnet50', 'plain_images_per_second': 3000.0,
        'amalgamation_vs_plain': 3.5, 'pretext_vs_plain': {'st': 1.5, 'ho': 2.0, 'hp': 2.1}}))
    measured = load_throughput(tmp_path / 'gpu.json')
    assert measured.images_per_second == 3000 and 'measured' in measured.source and 'H100' in measured.source
    assert cli.main(['plan', '--out', str(tmp_path / 'r')]) == 0
    text = capsys.readouterr().out
    assert 'total: 93 jobs' in text and 'GPU-hours' in text and 'throughput: ' in text and 'published sizes' in text


# ----------------------------------------------------------------------------------- manifest and executors

def test_verified_job_skipped_and_tampered_output_redone(tmp_path):
    jobs = [fake('a', tmp_path), fake('b', tmp_path, deps=('a',), needs='a')]
    assert run_graph(jobs, tmp_path, LocalBackend(), poll_s=0.01) == {'a': 'done', 'b': 'done'}
    before = snapshot(tmp_path, ['a', 'b'])
    assert run_graph(jobs, tmp_path, LocalBackend(), poll_s=0.01) == {'a': 'done', 'b': 'done'}
    assert snapshot(tmp_path, ['a', 'b']) == before  # verified by sha256: nothing ran, nothing written
    (tmp_path / 'a.txt').write_text('tampered')
    run_graph(jobs, tmp_path, LocalBackend(), poll_s=0.01)
    assert (tmp_path / 'a.txt').read_text() == '1 steps from 1'  # redone (from its checkpoint)
    assert [len(read_record(tmp_path, j)['attempts']) for j in 'ab'] == [2, 2]  # b read a changed input: redone
    assert (tmp_path / 'b.txt').read_text().endswith('1 steps from 1')


def test_failed_job_stops_only_its_dependents(tmp_path, capsys):
    jobs = [fake('a', tmp_path, fail=True), fake('b', tmp_path, deps=('a',)), fake('c', tmp_path)]
    assert run_graph(jobs, tmp_path, LocalBackend(), poll_s=0.01) == {'a': 'failed', 'b': 'blocked', 'c': 'done'}
    record = read_record(tmp_path, 'a')
    assert record['status'] == 'failed' and 'exit code 1' in record['error'] and 'failing as asked' in record['error']
    assert str(job_folder(tmp_path, 'a') / 'log.txt') in record['error'] and not job_folder(tmp_path, 'b').exists()
    assert '1 failed, 1 stopped by a failure' in capsys.readouterr().out


def test_resume_after_a_killed_job(tmp_path):
    job = fake('a', tmp_path, steps=40, sleep=0.05)

    def kill_when_started(child):
        def kill():
            while not (tmp_path / 'a.state').exists() or int((tmp_path / 'a.state').read_text() or 0) < 3:
                time.sleep(0.02)
            child.send_signal(signal.SIGKILL)
        threading.Thread(target=kill, daemon=True).start()

    with pytest.raises(JobFailed, match='signal 9'):
        execute(job, tmp_path, started_child=kill_when_started)
    assert run_graph([job], tmp_path, LocalBackend(), poll_s=0.01) == {'a': 'done'}
    starts = [int(line.split()[1]) for line in (tmp_path / 'a.trace').read_text().splitlines()]
    assert starts[0] == 0 and starts[1] >= 3  # the second attempt went on from the saved step
    assert [a['outcome'] for a in read_record(tmp_path, 'a')['attempts']] == ['exit code -9 (signal 9)', 'done']


def test_manifest_round_trip(tmp_path):
    jobs = [fake('a', tmp_path), fake('b', tmp_path, deps=('a',), needs='a')]
    run_graph(jobs, tmp_path, LocalBackend(), poll_s=0.01)
    spec = Spec(out=tmp_path, data_root=tmp_path / 'data', archs=('resnet18',), tables=(1,))
    header = {'spec': cli.spec_json(spec), 'datasets': {'fi': {'files': 3, 'sha256': '0' * 64}}, 'plan': {}}
    written = write_manifest(tmp_path, jobs, header)
    assert read_manifest(tmp_path) == json.loads(json.dumps(written))
    assert cli.spec_from_json(read_manifest(tmp_path)['spec']) == spec
    from sentizoo.weights import sha256_file
    assert written['artefacts']['b.txt'] == {'sha256': sha256_file(tmp_path / 'b.txt'), 'job': 'b',
                                             'command': jobs[1].command}
    assert written['jobs']['b']['inputs'] == {'a.txt': sha256_file(tmp_path / 'a.txt')}
    assert written['totals']['done'] == 2 and written['git_commit'] and 'torch' in written['versions']


def test_submitit_local_executor_failing_and_requeued_job(tmp_path):
    jobs = [fake('slow', tmp_path, steps=60, sleep=0.1), fake('bad', tmp_path, fail=True),
            fake('after_bad', tmp_path, deps=('bad',))]
    backend = SubmititBackend('local', {'timeout_min': 5, 'signal_delay_s': 1})
    result = {}
    driver = threading.Thread(target=lambda: result.update(run_graph(jobs, tmp_path, backend, poll_s=0.1)))
    driver.start()
    trace = tmp_path / 'slow.trace'
    while not (tmp_path / 'slow.state').exists() or int((tmp_path / 'slow.state').read_text() or 0) < 3:
        time.sleep(0.05)
    task = int(trace.read_text().split()[-1])  # the submitit task running the command: pre-empt it as Slurm does
    os.kill(task, signal.SIGUSR2)
    driver.join(120)
    assert result == {'slow': 'done', 'bad': 'failed', 'after_bad': 'blocked'}
    starts = [int(line.split()[1]) for line in trace.read_text().splitlines()]
    assert len(starts) == 2 and starts[1] >= 3  # requeued, resumed from its checkpoint
    outcomes = [a['outcome'] for a in read_record(tmp_path, 'slow')['attempts']]
    assert outcomes == ['pre-empted or timed out: requeued', 'done']
    assert 'requeued' in (job_folder(tmp_path, 'slow') / 'log.txt').read_text()
    assert 'failing as asked' in read_record(tmp_path, 'bad')['error']


# ---------------------------------------------------------------------------------------------------- hub

def _release_with_hub(out: Path) -> dict:
    """A manifest with two models whose hub folders hold these files (what the cards job leaves)."""
    artefacts, models = {}, {}
    from sentizoo.weights import sha256_file
    for name in ('senti_resnet18.st', 'senti_resnet18.fi'):
        for file in ('model.safetensors', 'config.json', 'README.md'):
            path = out / 'hub' / name / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f'{name} {file}')
            artefacts[f'hub/{name}/{file}'] = {'sha256': sha256_file(path), 'job': 'cards', 'command': 'c'}
        models[name] = {'sha256': artefacts[f'hub/{name}/model.safetensors']['sha256'], 'results': []}
    return {'artefacts': artefacts, 'models': models}


class FakeHub:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create', repo_id))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(('commit', repo_id, tuple(files)))


def test_publish_one_commit_per_repo_refuses_tampered_and_dry_run_uploads_nothing(tmp_path, monkeypatch, capsys):
    manifest = _release_with_hub(tmp_path)
    hub = FakeHub()
    publish(tmp_path, manifest, org='me', dry_run=True, api=hub)
    assert hub.calls == [] and 'would upload to https://huggingface.co/me/senti_resnet18.fi' in capsys.readouterr().out
    publish(tmp_path, manifest, org='me', api=hub)
    assert [c for c in hub.calls if c[0] == 'commit'] == [
        ('commit', f'me/{n}', ('README.md', 'config.json', 'model.safetensors')) for n in manifest['models']]
    hub.calls.clear()
    (tmp_path / 'hub' / 'senti_resnet18.fi' / 'README.md').write_text('edited by hand')
    with pytest.raises(PublishError, match='senti_resnet18.fi/README.md: sha256 differs'):
        publish(tmp_path, manifest, api=hub)
    assert hub.calls == []  # one bad folder: nothing is uploaded
    import huggingface_hub  # the command line's path: HfApi itself, replaced by the fake
    monkeypatch.setattr(huggingface_hub, 'HfApi', lambda: hub)
    (tmp_path / 'release.json').write_text(json.dumps({'format': 'sentizoo.release/1', **manifest}))
    assert cli.main(['publish', '--out', str(tmp_path)]) == 2 and hub.calls == []
    assert 'refusing to publish' in capsys.readouterr().err


def test_generated_published_py_imports_and_equals_the_manifest(tmp_path):
    manifest = {'format': 'sentizoo.release/1', 'models': {'senti_resnet18.st': {'sha256': 'a' * 64},
                                                            'senti_resnet50.fi': {'sha256': 'b' * 64}}}
    (tmp_path / 'release.json').write_text(json.dumps(manifest))
    target = tmp_path / 'published.py'
    shutil.copyfile(ROOT / 'sentizoo' / 'published.py', target)
    assert cli.main(['publish', '--out', str(tmp_path), '--write-published', str(target)]) == 0
    spec = importlib.util.spec_from_file_location('generated_published', target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from sentizoo.published import SHA256
    assert module.SHA256 == {**SHA256, 'senti_resnet18.st': 'a' * 64, 'senti_resnet50.fi': 'b' * 64}
    assert "    'senti_resnet18.st': None,\n" in render_published(target.read_text(), {'senti_resnet18.st': None})


# ----------------------------------------------------------------------------------------- the rehearsal

@pytest.mark.slow
def test_rehearsal_through_submitit_survives_a_killed_driver(tmp_path):
    """The smallest rehearsal (ST of resnet18: pretrain, export, verify, cards, publish --dry-run) through
    submitit.LocalExecutor; the driver is SIGKILLed mid-graph and the same command finishes the release."""
    out = tmp_path / 'release'
    command = [sys.executable, '-m', 'training.release', 'run', '--rehearsal', '--out', str(out), '--archs',
               'resnet18', '--tags', 'st', '--tables', '--executor', 'submitit-local', '--poll', '0.2']
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = job_folder(out, 'export.st_resnet18') / 'job.json'
    deadline = time.time() + 240
    while not done.exists() and time.time() < deadline and driver.poll() is None:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = ['pretrain.st_resnet18', 'export.st_resnet18']
    before = snapshot(out, finished)
    weights = (out / 'zoo' / 'senti_resnet18.st' / 'model.safetensors').read_bytes()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(out, finished) == before  # not rerun: logs and records unchanged
    assert (out / 'zoo' / 'senti_resnet18.st' / 'model.safetensors').read_bytes() == weights
    assert 'loaded senti_resnet18.st with timm.create_model' in result.stdout
    manifest = read_manifest(out)
    assert manifest['totals']['done'] == manifest['totals']['jobs'] == 5
    assert 'would upload to https://huggingface.co/sentizoo/senti_resnet18.st' in (
        job_folder(out, 'publish') / 'log.txt').read_text()
    card = (out / 'hub' / 'senti_resnet18.st' / 'README.md').read_text()
    assert 'Release rehearsal' in card and 'model-index' not in card  # toy numbers never in a model-index
    config = json.loads((out / 'hub' / 'senti_resnet18.st' / 'config.json').read_text())
    assert config['sentizoo_release']['commands'][0].startswith('torchrun') and 'places365' in config[
        'sentizoo_release']['datasets']
