"""sentizoo.engine under torchrun: 2 gloo processes on the CPU equal 1 process with the same global batch."""
import json
import os
import socket
import subprocess
import sys

import torch

from test_engine import WORKER, one_thread, state, tiny, train_tiny  # noqa: F401 (one_thread: autouse fixture)


def test_two_gloo_processes_equal_one_process(tmp_path):
    """One DDP over the whole Amalgamator: after 3 steps all four models match the single-process run.

    BatchNorm would make this false by design: each process normalises with the statistics of its half
    batch (and DDP broadcasts rank 0's running statistics), so a BN network under DDP is a different
    function of the global batch than the single process (``sync_batchnorm=True`` fixes that, on GPUs
    only). GroupNorm normalises each sample on its own, so here equality must hold up to float summation
    order. The dataset draws random noise per sample: the engine's per-sample seeding makes the two
    processes see exactly the samples, and the augmentations, of the single process's batches.
    """
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    common = dict(epochs=1, group_norm=True, validate=True, lr=0.05)
    ranks = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE='2', OMP_NUM_THREADS='1')
        args = dict(common, checkpoint_dir=str(tmp_path / f'rank{rank}'), batch_size=2)  # global batch 4
        ranks.append(subprocess.Popen([sys.executable, '-c', WORKER, json.dumps(args)], env=env,
                                      stderr=subprocess.PIPE, text=True))
    try:
        train_tiny(tmp_path / 'single', batch_size=4, **common)
        for p in ranks:
            assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        for p in ranks:
            p.kill()

    assert sorted(os.listdir(tmp_path / 'rank1')) == []  # only rank 0 writes
    ddp, one = state(tmp_path / 'rank0'), state(tmp_path / 'single')
    assert ddp['global_step'] == one['global_step'] == 3
    for key, value in one['model'].items():
        torch.testing.assert_close(ddp['model'][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # ... and the tolerance is far below what training moved the weights
    torch.manual_seed(0)
    initial = tiny(group_norm=True).state_dict()  # train_tiny's target before training
    moved = max(float((one['model'][f'target.{k}'] - v).abs().max()) for k, v in initial.items())
    differ = max(float((ddp['model'][k] - v).abs().max()) for k, v in one['model'].items())
    assert differ < 1e-3 * moved, (differ, moved)
    # validation ran sharded over the two processes and summed: the same accuracy as one process
    assert json.loads(ddp['history'])['epochs'][0]['val'] == json.loads(one['history'])['epochs'][0]['val']
