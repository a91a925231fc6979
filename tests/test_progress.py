"""sentizoo.progress: logger hooks (a recorder, TensorBoard through a stand-in SummaryWriter) get what the
history holds, every step and every epoch."""
import importlib.util

import pytest
from torch.utils.data import DataLoader

from sentizoo import engine
from helpers import Noisy, Recorder, tiny

pytestmark = pytest.mark.usefixtures('one_thread')


class FakeWriter:
    """What TensorBoardLogger needs of a SummaryWriter."""

    def __init__(self):
        self.scalars, self.flushed = [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushed += 1


def test_loggers_get_every_step_and_epoch(tmp_path):
    recorder, writer = Recorder(), FakeWriter()
    loader = DataLoader(Noisy(), batch_size=4, shuffle=True)  # 3 steps per epoch
    model = engine.finetune(tiny(), loader, val_loader=loader, epochs=2, progress=False, checkpoint_dir=tmp_path,
                            loggers=[recorder, writer])
    history = model.sentizoo_history
    assert recorder.started == (0, 3) and recorder.closed
    assert [(r['step'], r['epoch']) for r in recorder.rows] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert set(recorder.rows[0]) == {'step', 'epoch', 'lr', 'loss', 'task/target', 'time'}
    assert recorder.records == history['epochs']
    for epoch in (1, 2):  # equal batches: the epoch's mean is the mean of its steps
        losses = [r['loss'] for r in recorder.rows if r['epoch'] == epoch]
        assert history['epochs'][epoch - 1]['train']['loss'] == pytest.approx(sum(losses) / 3, rel=1e-12)
    assert [s for s in writer.scalars if s[0] == 'train/loss'] == [('train/loss', r['loss'], r['step'])
                                                                 for r in recorder.rows]
    assert ('epoch/val/accuracy', history['epochs'][1]['val']['accuracy'], 2) in writer.scalars
    assert ('epoch/train/task/target', history['epochs'][0]['train']['task/target'], 1) in writer.scalars


def test_a_resumed_run_tells_its_loggers_where_it_starts(tmp_path):
    loader = DataLoader(Noisy(), batch_size=4, shuffle=True)
    engine.finetune(tiny(), loader, epochs=1, progress=False, checkpoint_dir=tmp_path)
    recorder = Recorder()
    engine.finetune(tiny(), loader, epochs=2, progress=False, checkpoint_dir=tmp_path, loggers=[recorder])
    assert recorder.started == (3, 3) and [r['step'] for r in recorder.rows] == [4, 5, 6]


def test_what_is_not_a_logger_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(engine, 'Loop', None)  # anything past the checks would crash on this
    loader = DataLoader(Noisy(), batch_size=4)
    with pytest.raises(TypeError, match='object is not a logger: subclass sentizoo.progress.Logger'):
        engine.finetune(tiny(), loader, loggers=[object()])
    if importlib.util.find_spec('tensorboard') is None:
        with pytest.raises(ImportError, match='pip install tensorboard'):
            engine.finetune(tiny(), loader, loggers=['tensorboard'])
