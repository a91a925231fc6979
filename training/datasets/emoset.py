"""EmoSet-118K (Yang et al., ICCV 2023): 8 emotions with official JSON splits, single-label (SLL).

Layout under ``root``: ``info.json``, ``train.json``, ``val.json``, ``test.json``, ``image/`` and
``annotation/``. Each split file is a JSON list of ``[emotion, image_id, image_relpath,
annotation_relpath]``. Class indices come from ``info.json`` ``emotion.label2idx`` (amusement 0, awe 1,
contentment 2, excitement 3, anger 4, disgust 5, fear 6, sadness 7), so ``classes`` is *not*
alphabetical here. Per-image attributes (brightness, colorfulness, scene, objects, facial expression,
human action) are read on demand by :meth:`EmoSet.attributes`; each is optional in the annotation files.
"""
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .common import DatasetFormatError, require_path
from .emotion import DownstreamDataset, PathLike, check_files_exist, index_targets

ATTRIBUTES = ('brightness', 'colorfulness', 'scene', 'object', 'facial_expression', 'human_action')


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(path, f'valid JSON ({e.msg})', e.lineno) from None


class EmoSet(DownstreamDataset):
    """EmoSet reader: ``EmoSet(root, split)[i] == (transform(image), class index)``."""

    name = 'emoset'
    tasks = ('sll',)

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 task: Optional[str] = None):
        super().__init__(root, split, transform, task)
        info_file = require_path(self.root / 'info.json', 'EmoSet info.json with emotion.label2idx')
        info = _read_json(info_file)
        emotion = info.get('emotion') if isinstance(info, dict) else None
        label2idx = emotion.get('label2idx') if isinstance(emotion, dict) else None
        if (not isinstance(label2idx, dict)
                or sorted(label2idx.values()) != list(range(len(label2idx)))):
            raise DatasetFormatError(info_file, '"emotion": {"label2idx": {name: index 0..K-1}}', None, str(label2idx))
        self.classes = tuple(sorted(label2idx, key=label2idx.get))

        split_file = require_path(self.root / f'{split}.json', f'the EmoSet {split} split file')
        entries = _read_json(split_file)
        expected = f'a JSON list of [emotion, image_id, image_relpath, annotation_relpath], emotion in {self.classes}'
        if not isinstance(entries, list):
            raise DatasetFormatError(split_file, expected, None, type(entries).__name__)
        for i, entry in enumerate(entries):
            if (not isinstance(entry, list) or len(entry) != 4 or not all(isinstance(x, str) for x in entry)
                    or entry[0] not in label2idx):
                raise DatasetFormatError(split_file, f'{expected} (entry {i})', None, str(entry))
        self.image_ids = [e[1] for e in entries]
        self.annotation_paths = [self.root / e[3] for e in entries]
        paths = [self.root / e[2] for e in entries]
        check_files_exist(paths, self.name, split_file)
        self._set_samples(paths, index_targets(label2idx[e[0]] for e in entries))

    def attributes(self, index: int) -> Dict[str, Any]:
        """The attributes of image ``index`` from its annotation JSON; a missing key reads as ``None``
        (``[]`` for ``object``, the only multi-label attribute), as in the official loader."""
        path = require_path(self.annotation_paths[index], 'an EmoSet annotation JSON file')
        annotation = _read_json(path)
        return {k: annotation.get(k, [] if k == 'object' else None) for k in ATTRIBUTES}
