"""Every test runs offline against an empty, private zoo directory and HF cache."""
import hashlib
import shutil
from pathlib import Path
from typing import Dict, Union

import pytest


@pytest.fixture(autouse=True)
def isolated_zoo(tmp_path_factory, monkeypatch) -> Path:
    """``$SENTIZOO_HOME`` for this test (empty), with the HF cache beside it and the hub offline."""
    root = tmp_path_factory.mktemp('zoo')
    monkeypatch.setenv('SENTIZOO_HOME', str(root / 'zoo'))
    monkeypatch.setenv('HF_HUB_CACHE', str(root / 'hf'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return root / 'zoo'


def write_hf_cache(cache_dir: Union[str, Path], repo_id: str, files: Dict[str, Union[str, Path]],
                   revision: str = 'a' * 40) -> Path:
    """Lay ``files`` out exactly as huggingface_hub caches a model repo; returns the snapshot folder.

    models--<org>--<name>/blobs/<sha256>, snapshots/<revision>/<file> -> ../../blobs/<sha256>, refs/main.
    """
    repo = Path(cache_dir) / f'models--{repo_id.replace("/", "--")}'
    snapshot = repo / 'snapshots' / revision
    (repo / 'blobs').mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / 'main').write_text(revision)
    for name, src in files.items():
        blob = repo / 'blobs' / hashlib.sha256(Path(src).read_bytes()).hexdigest()
        shutil.copyfile(src, blob)
        (snapshot / name).symlink_to(Path('..', '..', 'blobs', blob.name))
    return snapshot
