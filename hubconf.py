"""torch.hub entry points: ``torch.hub.load('sentizoo/sentizoo', 'senti_resnet50', pretrained=True)``."""
dependencies = ['torch', 'timm', 'huggingface_hub', 'safetensors']

import timm  # noqa: E402

import sentizoo  # noqa: E402,F401  (registers the senti_* models in timm)


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


def amalgamator(arch: str = 'resnet50', num_classes: int = 8, task: str = 'sll', pretrained: bool = True, **kwargs):
    """The paper's amalgamation module: an ``arch`` target plus the ST, HO and HP teachers; the same as
    ``timm.create_model(f'amalgamator_senti_{arch}', ...)``.

    Every model gets a fresh ``num_classes`` head; the target starts from the HP backbone (the official
    recipe). Train it like any module: in train mode ``forward(images, targets)`` returns the target's
    logits, the loss and every loss term; ``.target`` is the model to keep.

    Args:
        arch: resnet18/50/101, vgg16_bn or vgg19_bn.
        num_classes: outputs of the downstream task.
        task: ``sll``, ``mll`` or ``ldl``.
        pretrained: load the teachers' sentiment-pretrained weights (else random, for testing).
        **kwargs: :class:`sentizoo.Amalgamator` options (``feature_stages``, ``logits_teachers``,
            ``teacher_task_loss``, ``freeze_teachers``, ``loss_weights``, ``side_by_side``).
    """
    from sentizoo.models import senti_name
    return timm.create_model(f'amalgamator_{senti_name(arch)}', pretrained=pretrained, num_classes=num_classes,
                             task=task, **kwargs)
