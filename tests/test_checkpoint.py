"""sentizoo.checkpoint: atomic writes, every generator's state, and files of other formats refused."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sentizoo import checkpoint, engine
from sentizoo.checkpoint import FORMAT
from helpers import Noisy, tiny

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


def test_a_file_of_another_format_is_not_resumed_but_its_weights_read(tmp_path):
    """No released sentizoo wrote another format: such a file is another trainer's, refused as a checkpoint and
    read as a state dict like any other."""
    path = tmp_path / 'run' / 'last.pt'
    path.parent.mkdir()
    torch.save({'format': 'sentizoo.engine/1', 'model': {'w': torch.zeros(1)}, 'epoch': 1}, path)
    with pytest.raises(ValueError, match=rf"not a sentizoo training checkpoint \(format 'sentizoo.engine/1', "
                                         rf"expected '{FORMAT}'\)"):
        engine.finetune(tiny(), DataLoader(Noisy(), batch_size=4), epochs=1, checkpoint_dir=path.parent,
                        progress=False)
    assert checkpoint.read_state_dict(path).keys() == {'w'}


def test_weights_only_and_foreign_files_are_not_resumed(tmp_path):
    final = checkpoint.save({'model': {'w': torch.zeros(1)}}, tmp_path / 'final.pt')
    with pytest.raises(ValueError, match='weights of a finished run, not a resumable checkpoint'):
        checkpoint.load(final, resumable=True)
    torch.save({'w': torch.zeros(1)}, tmp_path / 'state.pt')
    with pytest.raises(ValueError, match="not a sentizoo training checkpoint \\(format None"):
        checkpoint.load(tmp_path / 'state.pt')
    assert checkpoint.read_state_dict(tmp_path / 'state.pt').keys() == {'w'}  # another trainer's weights: fine
