"""torch.hub entry points from a local checkout."""
import importlib.util
from pathlib import Path

import timm
import torch

from sentizoo.saving import save_pretrained

REPO = Path(__file__).resolve().parents[1]


def test_hub_exposes_one_entrypoint_per_arch():
    # torch.hub.list/help only take GitHub repos; they list the public callables of hubconf exactly like this.
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entrypoints = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith('_')]
    assert sorted(entrypoints) == sorted(
        ['senti_vgg16_bn', 'senti_vgg19_bn', 'senti_resnet18', 'senti_resnet50', 'senti_resnet101', 'amalgamator'])
    assert 'tag' in hubconf.senti_resnet50.__doc__ and hubconf.dependencies[0] == 'torch'


def test_hub_load_from_local_weights(isolated_zoo):
    reference = timm.create_model('senti_resnet18.ho')
    save_pretrained(reference, isolated_zoo / 'senti_resnet18.ho', verbose=False)
    model = torch.hub.load(str(REPO), 'senti_resnet18', source='local', pretrained=True, tag='ho')
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    classifier = torch.hub.load(str(REPO), 'senti_resnet18', source='local', num_classes=8)
    assert classifier.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 8)


def test_hub_amalgamator_from_local_teachers(isolated_zoo):
    torch.manual_seed(0)
    for tag in ('st', 'ho', 'hp'):
        save_pretrained(timm.create_model(f'senti_resnet18.{tag}'), isolated_zoo / f'senti_resnet18.{tag}', verbose=False)
    module = torch.hub.load(str(REPO), 'amalgamator', source='local', arch='resnet18', num_classes=4, task='mll')
    hp = timm.create_model('senti_resnet18.hp', pretrained=True)
    assert torch.equal(module.target.layer3[0].conv1.weight, hp.layer3[0].conv1.weight)  # target starts from HP
    assert module.target.num_classes == 4 and sorted(module.teachers) == ['ho', 'hp', 'st']
    out = module.train()(torch.randn(2, 3, 64, 64), torch.tensor([[1., 0, 0, 1], [0, 1, 0, 0]]))
    assert out.logits.shape == (2, 4) and set(out.terms) >= {'task/target', 'feat/st', 'feat/ho', 'feat/hp', 'logits/hp'}


def test_hub_amalgamator_ablation_loads_only_the_teachers_its_terms_use():
    # An ablation that drops the ST and HO terms must not be refused for carrying unused teachers.
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    module = hubconf.amalgamator('resnet18', num_classes=3, pretrained=False, feature_stages=(3,))
    assert sorted(module.teachers) == ['hp'] and module.term_names[-2:] == ['feat/hp', 'logits/hp']
    module = hubconf.amalgamator('resnet18', num_classes=3, pretrained=False, feature_stages=(1,), logits_teachers=())
    assert sorted(module.teachers) == ['st']
