"""training.model_card: the card states only numbers it was given (through `python -m training.export`), the
committed cards are current, and `python -m training.model_card` writes them."""
import json
import re

import pytest
import timm
import torch
import yaml

import sentizoo  # noqa: F401  (registers senti_*)
from helpers import PRETRAIN_CONFIG, write_pretrain_checkpoint
from training.export import main
from training.model_card import TEMPLATE, render_card

NUMBER = re.compile(r'(?<![\w.-])\d+(?:\.\d+)?(?:e-?\d+)?')


def _stats(name: str, num_classes: int, size: int):
    """Params (M) and GMACs counted here on a real CPU model, independently of the card's meta-device count."""
    from torch.utils.flop_counter import FlopCounterMode
    model = timm.create_model(name.split('.')[0], num_classes=num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}', f'{counter.get_total_flops() / 2e9:.2f}'


def _allowed_numbers(*given: str) -> set:
    from training.model_card import _CLASSIFY, _FINETUNE
    return set(NUMBER.findall(' '.join([TEMPLATE.read_text(), _CLASSIFY, _FINETUNE, *given])))


def test_card_states_only_numbers_it_was_given(tmp_path):
    write_pretrain_checkpoint(tmp_path / 'final.pt')
    results = [{'dataset': 'FI', 'split': 'test', 'task': 'sll', 'metric': 'accuracy', 'value': 61.73},
               {'dataset': 'Emotion6', 'task': 'ldl', 'metric': 'kl', 'value': 0.3141, 'synthetic': True}]
    (tmp_path / 'results.json').write_text(json.dumps({'results': results}))
    main(['--checkpoint', str(tmp_path / 'final.pt'), '--tag', 'st', '--results', str(tmp_path / 'results.json')])
    card = (sentizoo.zoo_home() / 'senti_resnet18.st' / 'README.md').read_text()
    given = json.dumps([PRETRAIN_CONFIG, results]) + ' 1 3 51 17 0.9183 0.5511 1e-05 3e-05 0.0137'  # + checkpoint facts
    params, gmacs = _stats('senti_resnet18', 0, 48)  # the backbone at the size it was pre-trained at
    allowed = _allowed_numbers(given, params, gmacs) | {
        torch.__version__.split('+')[0], timm.__version__, sentizoo.__version__}
    stated = set(NUMBER.findall(card))
    assert stated - allowed == set(), card
    assert {'61.73', '0.3141', '4242', '0.0137', params, gmacs} <= stated
    assert f'Params (M): {params}' in card and f'GMACs: {gmacs}' in card and 'Image size: 48 x 48' in card
    meta = yaml.safe_load(card.split('---')[1])
    assert meta['license'] == 'cc-by-nc-4.0' and meta['pipeline_tag'] == 'image-feature-extraction'
    assert 'datasets' not in meta and 'base_model' not in meta  # synthetic data, random initialisation
    # model-index: the measured FI result only; the synthetic one stays in the table
    assert meta['model-index'][0]['results'] == [{'task': {'type': 'image-classification'},
                                                  'dataset': {'name': 'FI', 'type': 'fi', 'split': 'test'},
                                                  'metrics': [{'type': 'accuracy', 'value': 61.73}]}]
    assert '| Emotion6 (synthetic) |' in card and 'Synthetic demo weights' in card
    assert '### Feature map extraction' in card and '### Image embeddings' in card


def test_card_without_results_has_no_numbers_but_the_facts():
    card = render_card('senti_resnet50.fi', repo_id='sentizoo/senti_resnet50.fi', architecture='resnet50',
                       description='FI classifier.', recipe=[('Seed', 'seven')], commands=['python -m x'],
                       num_classes=8, base_model='sentizoo/senti_resnet50.hp')
    assert set(NUMBER.findall(card)) <= _allowed_numbers(*_stats('senti_resnet50', 8, 224))
    assert 'model-index' not in card and 'No evaluation has been recorded' in card
    meta = yaml.safe_load(card.split('---')[1])
    assert (meta['pipeline_tag'], meta['datasets'], meta['base_model']) == (
        'image-classification', ['fi'], 'sentizoo/senti_resnet50.hp')
    assert "labels = model.pretrained_cfg['label_names']" in card  # classification usage for a classifier
    with pytest.raises(ValueError, match=r"missing \['value'\]"):
        render_card('n', repo_id='r', architecture='a', description='d', recipe=[], commands=[],
                    results=[{'dataset': 'FI', 'metric': 'accuracy'}])


def test_committed_model_cards_are_current_and_hold_no_numbers():
    import sentizoo
    from training.model_card import CARDS, planned_card
    names = sentizoo.list_models(pretrained=True)
    assert sorted(p.stem for p in CARDS.glob('senti_*.md')) == sorted(names)
    for name in names:
        card = (CARDS / f'{name}.md').read_text(encoding='utf-8')
        assert card == planned_card(name), f'{name}.md is stale: run python -m training.model_card'
        assert 'Not published yet' in card and 'model-index' not in card
        assert 'No evaluation has been recorded' in card
        meta = yaml.safe_load(card.split('---')[1])
        backbone = name.split('.')[1] in ('st', 'ho', 'hp')
        assert meta['pipeline_tag'] == ('image-feature-extraction' if backbone else 'image-classification')
        assert meta['base_model'] == (f'timm/{name[6:].split(".")[0]}.tv_in1k' if backbone
                                      else f'sentizoo/{name.split(".")[0]}.hp')


def test_model_card_main_writes_into_a_new_folder(tmp_path):
    import sentizoo
    from training.model_card import main as card_main, planned_card
    out = tmp_path / 'cards'
    assert card_main(['--out', str(out)]) == 0
    names = sentizoo.list_models(pretrained=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(f'{n}.md' for n in names)
    assert (out / f'{names[0]}.md').read_text(encoding='utf-8') == planned_card(names[0])
