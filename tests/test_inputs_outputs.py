"""Inputs and outputs of the command line and of a user's own model: bad training files found before the first
step, predictions written safely whatever the labels or logits hold, training failures told in one line, and a
model trained here described by what it was trained with (issue 23)."""
import csv
import errno
import io
import json
import os
from pathlib import Path

import pytest
import timm
import torch

import sentizoo.engine as engine
from helpers import write_images
from sentizoo.cli import main
from sentizoo.saving import save_pretrained

TRAIN = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress', '--epochs', '1',
         '--baseline', '--init', 'random']


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- training data: every file's header is checked before the first step -----------------------------------

@pytest.mark.parametrize('layout', ['folder', 'csv'])
def test_an_empty_training_image_is_refused_before_the_first_step(capsys, tmp_path, tiny_resnet18, monkeypatch,
                                                                   layout):
    write_images(tmp_path / 'images')
    (tmp_path / 'images' / 'joy' / '1.jpg').write_bytes(b'')
    (tmp_path / 'images' / 'rage' / '2.jpg').write_text('not an image')
    data = tmp_path / 'images'
    if layout == 'csv':
        data = tmp_path / 'labels.csv'
        data.write_text('path,calm,joy,rage\n' + ''.join(f'images/{name}/{i}.jpg,{int(name == "calm")},'
                                                          f'{int(name == "joy")},{int(name == "rage")}\n'
                                                          for name in ('calm', 'joy', 'rage') for i in range(4)))
    monkeypatch.setattr(engine.Loop, '_train_step', None)  # a step would crash
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', data, '--output', tmp_path / 'out', *TRAIN,
                        *(['--task', 'mll'] if layout == 'csv' else []))
    assert code == 2 and len(err.splitlines()) == 1 and '2 problem(s)' in err
    assert f'{tmp_path / "images" / "joy" / "1.jpg"}: the file is empty (0 bytes)' in err
    assert f'{tmp_path / "images" / "rage" / "2.jpg"}: not an image file' in err
