"""sentizoo.engine under torchrun: 2 gloo processes on the CPU, on one "machine" or as two single-process
"nodes" joined by a c10d rendezvous, equal 1 process with the same global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from helpers import CROSS_ARCH, WORKER, state, tiny_target, train_tiny

pytestmark = pytest.mark.usefixtures('one_thread')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _assert_equal_to_one_process(ddp: dict, one: dict, target: str = 'resnet18') -> None:
    """The same weights up to float summation order, far closer than what training moved them."""
    assert ddp['global_step'] == one['global_step'] == 3
    assert ddp['model'].keys() == one['model'].keys()
    for key, value in one['model'].items():
        torch.testing.assert_close(ddp['model'][key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.manual_seed(0)
    initial = tiny_target(target, group_norm=True).state_dict()  # train_tiny's target before training
    moved = max(float((one['model'][f'target.{k}'] - v).abs().max()) for k, v in initial.items())
    differ = max(float((ddp['model'][k] - v).abs().max()) for k, v in one['model'].items())
    assert differ < 1e-3 * moved, (differ, moved)
    # validation ran sharded over the two processes and summed: the same accuracy as one process
    assert json.loads(ddp['history'])['epochs'][0]['val'] == json.loads(one['history'])['epochs'][0]['val']


def test_two_gloo_processes_equal_one_process(tmp_path):
    """One DDP over the whole Amalgamator: after 3 steps all four models match the single-process run, in the
    paper's setting and with a target of another architecture, whose adapters are synchronised too.

    BatchNorm would make this false by design: each process normalises with the statistics of its half
    batch (and DDP broadcasts rank 0's running statistics), so a BN network under DDP is a different
    function of the global batch than the single process (``sync_batchnorm=True`` fixes that, on GPUs
    only). GroupNorm normalises each sample on its own, so here equality must hold up to float summation
    order; so do the adapters with ``adapter_norm='groupnorm1'`` beside the ViT target's LayerNorm. The dataset
    draws random noise per sample: the engine's per-sample seeding makes the two processes see exactly the
    samples, and the augmentations, of the single process's batches. Both runs share each process.
    """
    port = _free_port()
    common = dict(epochs=1, group_norm=True, validate=True, lr=0.05)
    runs = {'paper': common, 'cross': dict(common, target=CROSS_ARCH, adapter_norm='groupnorm1')}
    ranks = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE='2', OMP_NUM_THREADS='1')
        args = [dict(run, checkpoint_dir=str(tmp_path / f'rank{rank}' / name), batch_size=2)  # global batch 4
                for name, run in runs.items()]
        ranks.append(subprocess.Popen([sys.executable, '-c', WORKER, json.dumps(args)], env=env,
                                      stderr=subprocess.PIPE, text=True))
    try:
        for name, run in runs.items():
            train_tiny(tmp_path / 'single' / name, batch_size=4, **run)
        for p in ranks:
            assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        for p in ranks:
            p.kill()

    for name, run in runs.items():
        assert os.listdir(tmp_path / 'rank1' / name) == []  # only rank 0 writes
        ddp, one = state(tmp_path / 'rank0' / name), state(tmp_path / 'single' / name)
        _assert_equal_to_one_process(ddp, one, run.get('target', 'resnet18'))
    assert any(key.startswith('adapters.') for key in one['model'])


def test_two_single_process_nodes_with_c10d_rendezvous_equal_one_process(tmp_path):
    """The README's multi-node recipe on localhost: two torchrun agents (``--nnodes 2 --nproc-per-node 1``)
    meet at a c10d rendezvous; torchrun, not the test, gives each worker RANK, LOCAL_RANK and WORLD_SIZE."""
    common = dict(epochs=1, group_norm=True, validate=True, lr=0.05)
    args = json.dumps(dict(common, checkpoint_dir=str(tmp_path / 'shared'), batch_size=2))  # global batch 4
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR',
                                                             'MASTER_PORT')}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    endpoint = f'127.0.0.1:{_free_port()}'
    nodes = [subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc-per-node', '1', '--node-rank',
         str(node), '--rdzv-backend', 'c10d', '--rdzv-endpoint', endpoint, '--rdzv-id', 'sentizoo-test',
         '--no-python', sys.executable, '-c', WORKER, args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    try:
        train_tiny(tmp_path / 'single', batch_size=4, **common)
        for p in nodes:
            assert p.wait(timeout=120) == 0, p.stdout.read()[-3000:]
    finally:
        for p in nodes:
            p.kill()
    _assert_equal_to_one_process(state(tmp_path / 'shared'), state(tmp_path / 'single'))


DDP_PRETRAIN = '''
import json, sys
import torch.nn as nn
out, forced = sys.argv[1], json.loads(sys.argv[2])
wrap = nn.parallel.DistributedDataParallel.__init__
def record(self, module, *args, **kwargs):  # what training.pretrain asks DDP for (or what this run forces)
    kwargs['find_unused_parameters'] = kwargs['find_unused_parameters'] if forced is None else forced
    open(out + '/find_unused.json', 'w').write(json.dumps(kwargs['find_unused_parameters']))
    wrap(self, module, *args, **kwargs)
nn.parallel.DistributedDataParallel.__init__ = record
from training.pretrain import main
sys.exit(main(sys.argv[3:]))
'''


def run_pretrain_ddp(out, forced=None, steps=3):
    """ST on vgg16_bn pre-trained by 2 gloo processes (tiny: 64 px, 3 steps); ``forced`` overrides DDP's
    find_unused_parameters. Returns each rank's output folder."""
    port = _free_port()
    ranks = []
    for rank in range(2):
        folder = out / f'rank{rank}'
        folder.mkdir(parents=True)
        env = dict(os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE='2', OMP_NUM_THREADS='1')
        argv = ['--model', 'st', '--arch', 'vgg16_bn', '--dataset', 'synthetic', '--image-size', '64', '--epochs', '1',
                '--steps-per-epoch', str(steps), '--batch-size', '2', '--max-samples', '16', '--workers', '0',
                '--init', 'random', '--out-dir', str(out / 'run'), '--no-progress']
        ranks.append(subprocess.Popen([sys.executable, '-c', DDP_PRETRAIN, str(folder), json.dumps(forced), *argv],
                                      env=env, stderr=subprocess.PIPE, text=True))
    try:
        for p in ranks:
            assert p.wait(timeout=300) == 0, p.stderr.read()
    finally:
        for p in ranks:
            p.kill()
    return [out / f'rank{rank}' for rank in range(2)]


def test_pretraining_vgg_st_needs_no_unused_parameter_search(tmp_path):
    """With the paper's VGG head (no fc6/fc7) the ST tasks use every parameter: DDP trains without
    find_unused_parameters, which would search the graph every step for nothing."""
    for folder in run_pretrain_ddp(tmp_path):
        assert json.loads((folder / 'find_unused.json').read_text()) is False
