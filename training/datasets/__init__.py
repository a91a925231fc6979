"""Dataset readers for pre-training and downstream experiments, one module per dataset.

Pre-training: :mod:`.places365` (ST, HO), :mod:`.vso` (HP ANPs), :mod:`.artemis` (HP captions) and
:mod:`.synthetic`, the procedural affect world that stands in for all of them (and for the downstream
sets) without any download. Downstream: :mod:`.fi`, :mod:`.emoset`, :mod:`.unbiasedemo`, :mod:`.emotic`,
:mod:`.emotion6`, :mod:`.abstract`, built by name with :func:`get_dataset` (:mod:`.emotion`).
Shared pieces (the bad-image policy, fail-fast parsing, seeded splits, the pre-training transform)
live in :mod:`.common`.

Names are imported on first use, so importing one reader does not import the others.
"""
from importlib import import_module
from typing import Any

_LAZY = {
    'Places365': 'places365', 'VSO': 'vso', 'read_anp_list': 'vso', 'ArtEmis': 'artemis',
    'split_artworks': 'artemis', 'ImageDataset': 'common', 'DatasetFormatError': 'common',
    'pretrain_transform': 'common', 'AffectWorld': 'synthetic', 'SyntheticImages': 'synthetic',
    'SyntheticScenes': 'synthetic', 'SyntheticANP': 'synthetic', 'SyntheticCaptions': 'synthetic',
    'SyntheticEmotion': 'synthetic', 'write_image_folder': 'synthetic', 'get_dataset': 'emotion',
    'DATASET_NAMES': 'emotion',
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f'{__name__}.{_LAZY[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
