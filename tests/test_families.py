"""README's compatibility table ("Any timm target"), computed: one tiny model of each of 15 timm families, random
weights, through one amalgamation step at 32 px with resnet18 teachers, a save and a stock-timm reload.

The test fails when a family's row changes (its taps, adapters or result), e.g. after a timm upgrade. After a
change you mean, rewrite README's table with ``SENTIZOO_WRITE_README=1 pytest tests/test_families.py``.

The teachers are frozen (``freeze_teachers=True``, heads of the task's size so the logits term stays): the family
under test is the target's, and a frozen teacher skips its backward, which keeps the sweep at ~20 s on a CPU.
"""
import os
from pathlib import Path

import pytest
import timm
import torch

from sentizoo.amalgamation import Amalgamator, load_teachers
from sentizoo.saving import save_pretrained
from sentizoo.stages import stage_indices, stage_reductions

README = Path(__file__).resolve().parent.parent / 'README.md'
BEGIN, END = '<!-- compatibility table: tests/test_families.py -->', '<!-- end of compatibility table -->'
SIZE = 32
FAMILIES = [  # family, model, what it is created with besides num_classes
    ('resnet', 'resnet18', {}),
    ('resnext', 'resnext26ts', {}),
    ('regnet', 'regnetx_002', {}),
    ('convnext', 'convnext_atto', {}),
    ('efficientnet', 'efficientnet_b0', {}),
    ('mobilenetv3', 'mobilenetv3_small_050', {}),
    ('mobilenetv4', 'mobilenetv4_conv_small_035', {}),
    ('ghostnet', 'ghostnet_050', {}),
    ('densenet', 'densenet121', {}),
    ('mobilevit', 'mobilevit_xxs', {}),
    ('efficientvit', 'efficientvit_b0', {}),
    ('levit', 'levit_128s', {'img_size': SIZE}),
    ('swin', 'swin_tiny_patch4_window7_224', {'img_size': SIZE}),
    ('vit', 'vit_tiny_patch16_224', {'img_size': SIZE}),
    ('deit', 'deit_tiny_patch16_224', {'img_size': SIZE}),
    ('crossvit', 'crossvit_tiny_240', {}),
]
HEADER = ['| family | model | taps: `forward_intermediates` indices (reductions) | adapters with resnet18 teachers | '
          'result |', '|---|---|---|---|---|']


def _amalgamation_step(model: Amalgamator, x: torch.Tensor, y: torch.Tensor) -> None:
    """One SGD step of ``model``; checks that the loss is finite and that the target and adapters learn."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    out = model.train()(x, y)
    assert torch.isfinite(out.loss) and set(out.terms) >= {'feat/st', 'feat/ho', 'feat/hp', 'logits/hp'}
    out.loss.backward()
    torch.optim.SGD(params, lr=0.1).step()
    stem = next(model.target.parameters())
    learnt = [p is stem or any(p is q for q in model.adapters.parameters()) for p in params]
    assert all(not torch.equal(p, b) for p, b, check in zip(params, before, learnt) if check)


def _row(family: str, name: str, kwargs: dict, teachers: dict, folder: Path) -> str:
    cell = f'`{name}`' + ''.join(f' ({k}={v})' for k, v in kwargs.items())
    torch.manual_seed(0)
    target = timm.create_model(name, num_classes=3, **kwargs)
    try:
        model = Amalgamator(target, teachers, freeze_teachers=True, side_by_side=False)
    except ValueError as e:
        return f'| {family} | {cell} | | | refused: {e} |'
    x, y = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 2])
    _amalgamation_step(model, x, y)
    # the saved model is the plain timm target: stock timm rebuilds it and loads the file strictly
    save_pretrained(target, folder / name, verbose=False)
    reloaded = timm.create_model(name, num_classes=3, pretrained=True, **kwargs, pretrained_cfg_overlay=dict(
        file=str(folder / name / 'model.safetensors'), num_classes=3))
    ours, theirs = target.state_dict(), reloaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    taps = ', '.join(f'{i} ({r})' for i, r in zip(stage_indices(target), stage_reductions(target)))
    return f'| {family} | {cell} | {taps} | {", ".join(model.adapters) or "none"} | works |'


def _readme_table(text: str) -> list:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip('\n').splitlines()


@pytest.mark.usefixtures('one_thread')
def test_compatibility_table_matches_readme(tmp_path):
    torch.manual_seed(0)
    teachers = load_teachers('resnet18', 3, pretrained=False)  # heads of the task's size, random weights
    rows = HEADER + [_row(*family, teachers, tmp_path) for family in FAMILIES]
    assert len(FAMILIES) >= 12 and sum(row.endswith('| works |') for row in rows) >= 12
    text = README.read_text(encoding='utf-8')
    if os.environ.get('SENTIZOO_WRITE_README') == '1':
        before, rest = text.split(BEGIN, 1)
        text = before + BEGIN + '\n' + '\n'.join(rows) + '\n' + END + rest.split(END, 1)[1]
        README.write_text(text, encoding='utf-8')
    assert _readme_table(text) == rows, ('README\'s compatibility table differs from the computed one; if the '
                                         'change is meant, run SENTIZOO_WRITE_README=1 pytest tests/test_families.py')

