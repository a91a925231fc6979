"""The sha256 of every published weight file: one line per ``senti_<arch>.<tag>``, ``None`` until published.

Written out as data so that publishing a checkpoint is a one-line change here: ``python -m training.release publish
--write-published`` writes the lines of a release from its manifest (``python -m training.export`` prints the line
of one checkpoint). A published sha256 also tells ``sentizoo info`` and the error messages that the
weights can be downloaded from the Hugging Face hub. It imports nothing of sentizoo: any module may read it.
"""
from typing import Dict, Optional

__all__ = ['HUB_ORG', 'SHA256']

HUB_ORG = 'sentizoo'
"""The Hugging Face organisation of the published weights: ``<HUB_ORG>/senti_<arch>.<tag>``."""

SHA256: Dict[str, Optional[str]] = {
    'senti_vgg16_bn.hp': None,
    'senti_vgg16_bn.ho': None,
    'senti_vgg16_bn.st': None,
    'senti_vgg16_bn.fi': None,
    'senti_vgg19_bn.hp': None,
    'senti_vgg19_bn.ho': None,
    'senti_vgg19_bn.st': None,
    'senti_vgg19_bn.fi': None,
    'senti_resnet18.hp': None,
    'senti_resnet18.ho': None,
    'senti_resnet18.st': None,
    'senti_resnet18.fi': None,
    'senti_resnet50.hp': None,
    'senti_resnet50.ho': None,
    'senti_resnet50.st': None,
    'senti_resnet50.fi': None,
    'senti_resnet101.hp': None,
    'senti_resnet101.ho': None,
    'senti_resnet101.st': None,
    'senti_resnet101.fi': None,
}
