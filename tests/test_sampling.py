"""sentizoo.sampling: streams of batches that resume exactly, and the user's own samplers (weighted, with
set_epoch, or unseeded) in the training loop."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from sentizoo import engine
from sentizoo.sampling import EpochSampler, Stream
from helpers import Noisy, tiny

pytestmark = pytest.mark.usefixtures('one_thread')


class RandomCrops(Dataset):
    """(index, a random number): stands for a sample with a random augmentation."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return index, torch.rand(())


def _take(stream, n):
    return [tuple(map(torch.Tensor.tolist, stream.next())) for _ in range(n)]


def _loader(batch_size=3, workers=0, **kwargs):
    kwargs = kwargs or dict(shuffle=True)
    return DataLoader(RandomCrops(), batch_size=batch_size, drop_last=True, num_workers=workers, **kwargs)


def test_stream_cycles_in_passes_and_resumes_exactly():
    stream = Stream(_loader(), seed=5)
    assert stream.batches_per_pass == 3  # 10 samples, batch 3, last partial batch dropped
    batches = _take(stream, 3)
    assert stream._iterator is None  # a finished pass lets its worker processes go (before validation runs)
    batches += _take(stream, 4)
    first_pass = sum((b[0] for b in batches[:3]), [])
    assert len(set(first_pass)) == 9 and batches[:3] != batches[3:6]  # a new order every pass
    assert stream.state_dict() == {'epoch': 2, 'position': 1}
    resumed = Stream(_loader(), seed=5)
    resumed.load_state_dict({'epoch': 1, 'position': 1})
    torch.manual_seed(123)  # the caller's generator does not matter: each sample is seeded
    assert _take(resumed, 3) == batches[4:7]
    with_workers = Stream(_loader(workers=2), seed=5)
    assert _take(with_workers, 3) == batches[:3]  # same samples and augmentations whatever process loads them
    with pytest.raises(ValueError, match='toy: 10 samples give 10 per process, fewer than the batch size 11'):
        Stream(_loader(batch_size=11), seed=5, name='toy')


@pytest.mark.parametrize('make', [
    lambda: WeightedRandomSampler([5.0] + [1.0] * 9, num_samples=12, replacement=True),  # seeded via its generator
    lambda: DistributedSampler(RandomCrops(), num_replicas=1, rank=0, shuffle=True, seed=1),  # via set_epoch
], ids=['weighted', 'set_epoch'])
def test_own_sampler_is_seeded_per_pass_and_resumes_exactly(make):
    batches = _take(Stream(_loader(sampler=make()), seed=5), 8)
    torch.manual_seed(99)
    again = _take(Stream(_loader(sampler=make()), seed=5), 8)
    assert again == batches  # the order is a function of (seed, pass), not of the global generator
    per_pass = len(make()) // 3
    assert batches[:per_pass] != batches[per_pass:2 * per_pass]  # a new order every pass
    resumed = Stream(_loader(sampler=make()), seed=5)
    resumed.load_state_dict({'epoch': 1, 'position': 1})
    assert _take(resumed, 3) == batches[per_pass + 1:per_pass + 4]
    assert _take(Stream(_loader(sampler=make()), seed=6), 8) != batches


def test_repeated_draws_of_a_sample_get_their_own_augmentation():
    always_0 = WeightedRandomSampler([1.0] + [0.0] * 9, num_samples=6, replacement=True)
    indices, noise = _take(Stream(_loader(sampler=always_0), seed=5), 2)[0]
    assert indices == [0, 0, 0] and len(set(noise)) == 3


def test_weighted_sampler_trains_and_resumes_exactly(tmp_path, monkeypatch):
    """An imbalanced-data sampler in finetune: killed after step 4 of 6 and resumed, it ends bit-identical."""
    def run(folder):
        torch.manual_seed(0)
        sampler = WeightedRandomSampler([4.0 if i % 3 == 0 else 1.0 for i in range(12)], 12, replacement=True)
        return engine.finetune(tiny(), DataLoader(Noisy(), batch_size=4, sampler=sampler), epochs=2,
                               checkpoint_dir=folder, checkpoint_every=1, progress=False)

    straight = run(tmp_path / 'straight')
    step, calls = engine.Loop._train_step, []

    def crash_at_step_5(self):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(engine.Loop, '_train_step', crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / 'killed')
    monkeypatch.setattr(engine.Loop, '_train_step', step)
    resumed = run(tmp_path / 'killed')
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    strip = lambda h: [{k: v for k, v in e.items() if k != 'seconds'} for e in h['epochs']]  # noqa: E731
    assert strip(straight.sentizoo_history) == strip(resumed.sentizoo_history)


def test_unseeded_sampler_trains_but_its_resume_is_refused(tmp_path):
    loader = DataLoader(Noisy(), batch_size=4, sampler=list(range(12)))  # a list: no generator, no set_epoch
    engine.finetune(tiny(), loader, epochs=1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r'cannot be continued exactly: loader: its sampler \(list\) has neither '
                                         r'set_epoch\(\) nor a generator.*Delete the checkpoint'):
        engine.finetune(tiny(), loader, epochs=2, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match='the 2 processes would not agree on the order'):
        EpochSampler(12, 4, False, 0, rank=0, world=2, base=list(range(12)))
