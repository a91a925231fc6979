"""sentizoo.checkpoint: atomic writes, every generator's state, and checkpoints of earlier formats refused."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sentizoo import checkpoint, engine
from sentizoo.checkpoint import FORMAT
from helpers import Noisy, tiny
from training import pretrain as pt

pytestmark = pytest.mark.usefixtures('one_thread')


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = checkpoint.save({'step': 1}, tmp_path / 'last.pt')

    def crash(obj, file):
        Path(file).write_bytes(b'partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({'step': 2}, path)
    assert checkpoint.load(path) == {'step': 1, 'format': FORMAT}
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']


def test_rng_state_restores_python_numpy_and_torch():
    state = checkpoint.rng_state(torch.device('cpu'))
    first = (random.random(), np.random.rand(), torch.rand(()).item())
    checkpoint.set_rng_state(state, torch.device('cpu'))
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == first


def _old(path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'format': fmt, 'model': {'w': torch.zeros(1)}, 'epoch': 1}, path)
    return path


def test_engine_checkpoint_of_the_earlier_format_is_refused(tmp_path):
    old = _old(tmp_path / 'run' / 'last.pt', 'sentizoo.engine/1')
    with pytest.raises(ValueError, match=rf'{old} is a sentizoo.engine/1 checkpoint of an earlier sentizoo .*'
                                         rf'reads {FORMAT} only.*delete the file to start afresh'):
        engine.finetune(tiny(), DataLoader(Noisy(), batch_size=4), epochs=1, checkpoint_dir=old.parent,
                        progress=False)


def test_pretrain_checkpoint_of_the_earlier_format_is_refused(tmp_path):
    old = _old(tmp_path / 'run' / 'last.pt', 'sentizoo.pretrain/1')
    config = pt.PretrainConfig(model='st', arch='resnet18', dataset='synthetic', image_size=32, epochs=1,
                               out_dir=str(old.parent), resume='auto', init='random')
    with pytest.raises(ValueError, match=rf'{old} is a sentizoo.pretrain/1 checkpoint .*training.pretrain'):
        pt.pretrain(config)
    with pytest.raises(ValueError, match='sentizoo.pretrain/1'):  # nor are its weights read without a word
        checkpoint.read_state_dict(old)


def test_weights_only_and_foreign_files_are_not_resumed(tmp_path):
    final = checkpoint.save({'model': {'w': torch.zeros(1)}}, tmp_path / 'final.pt')
    with pytest.raises(ValueError, match='weights of a finished run, not a resumable checkpoint'):
        checkpoint.load(final, resumable=True)
    torch.save({'w': torch.zeros(1)}, tmp_path / 'state.pt')
    with pytest.raises(ValueError, match="not a sentizoo training checkpoint \\(format None"):
        checkpoint.load(tmp_path / 'state.pt')
    assert checkpoint.read_state_dict(tmp_path / 'state.pt').keys() == {'w'}  # another trainer's weights: fine
