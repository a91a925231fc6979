"""torch.hub entry points: ``torch.hub.load('sentizoo/sentizoo', 'senti_resnet50', pretrained=True)``."""
dependencies = ['torch', 'timm', 'huggingface_hub', 'safetensors']

import timm  # noqa: E402

import sentizoo  # noqa: E402  (registers the senti_* models in timm)


def _entrypoint(arch: str):
    def entrypoint(pretrained: bool = False, tag: str = 'hp', **kwargs):
        return timm.create_model(f'{arch}.{tag}', pretrained=pretrained, **kwargs)

    entrypoint.__name__ = arch
    entrypoint.__doc__ = (
        f'{arch} from sentizoo.\n\n'
        f'Args:\n'
        f'    pretrained: load the weights of ``{arch}.<tag>`` (local zoo dir, HF cache or HF hub).\n'
        f'    tag: ``hp`` (default), ``ho``, ``st`` (backbones) or ``fi`` (8-way FI classifier).\n'
        f'    **kwargs: passed to ``timm.create_model`` (e.g. ``num_classes``, ``features_only``).\n')
    return entrypoint


senti_vgg16_bn = _entrypoint('senti_vgg16_bn')
senti_vgg19_bn = _entrypoint('senti_vgg19_bn')
senti_resnet18 = _entrypoint('senti_resnet18')
senti_resnet50 = _entrypoint('senti_resnet50')
senti_resnet101 = _entrypoint('senti_resnet101')


def amalgamator(arch: str = 'resnet50', pretrained: bool = True, **kwargs):
    """The paper's amalgamation module: an ``arch`` target started from the HP backbone, plus the ST, HO and HP
    teachers (``pretrained``: their sentiment-pretrained weights, else random for testing); the same as
    ``timm.create_model(f'amalgamator_senti_{arch}', pretrained=True, ...)``. The other keyword arguments and
    their defaults are :func:`sentizoo.amalgamation.create_amalgamator`'s (``num_classes``, ``task``,
    ``teachers`` and every :class:`sentizoo.Amalgamator` option): ``arch='convnext_tiny', teachers='resnet50'``
    gives any timm target the zoo's teachers of another architecture."""
    if arch.removeprefix('senti_') not in sentizoo.ARCHS:  # no registry entry: built directly
        return sentizoo.create_amalgamator(arch, pretrained=pretrained, **kwargs)
    return timm.create_model(f'amalgamator_{sentizoo.senti_name(arch)}', pretrained=pretrained, **kwargs)
