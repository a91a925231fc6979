"""sentizoo.predict (sentizoo.inference): the library function behind `sentizoo predict`."""
import json

import pytest
import timm

import sentizoo
from helpers import BAD, MODEL
from sentizoo.cli import main
from sentizoo.inference import load_classifier


def test_predict_rows_are_the_clis(capsys, zoo, images, bomb_limit):
    messages = []
    rows = sentizoo.predict(MODEL, images, top_k=3, batch_size=2, workers=0, backend='torch', log=messages.append)
    code = main(['predict', MODEL, str(images), '--format', 'json', '--top-k', '3', '--batch-size', '2',
                 '--workers', '0', '--backend', 'torch'])
    assert code == 1
    cli = json.loads(capsys.readouterr().out)
    assert [dict(path=row['path'], error=row['error'], predictions=[dict(label=label, probability=p) for label, p
                                                                     in row['predictions']]) for row in rows] == cli
    failed = [row for row in rows if row['error']]
    assert len(failed) == len(BAD) and all(row['predictions'] == [] for row in failed)  # bad files keep their row
    assert len(messages) == len(BAD) and all(message.startswith('error: Cannot load image') for message in messages)


def test_predict_takes_a_model_and_files(zoo, images):
    model, task = load_classifier(MODEL)
    assert task is None and model.num_classes == 8
    rows = sentizoo.predict(model, [images / 'a_gradient.jpg', images / 'sub'], top_k=20, workers=0,
                            backend='torch')
    assert [row['path'] for row in rows] == [str(images / 'a_gradient.jpg'), str(images / 'sub' / 'noise.jpg')]
    assert all(len(row['predictions']) == 8 and row['error'] is None for row in rows)  # top_k capped at the classes
    assert sum(p for _, p in rows[0]['predictions']) == pytest.approx(1, abs=1e-5)


def test_predict_errors(zoo, images, tmp_path):
    with pytest.raises(ValueError, match='no classifier'):
        sentizoo.predict('senti_resnet18.hp', images)
    with pytest.raises(FileNotFoundError):
        sentizoo.predict(MODEL, tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no image files'):
        sentizoo.predict(MODEL, tmp_path / 'empty')
    with pytest.raises(ValueError, match='top_k'):
        sentizoo.predict(timm.create_model(MODEL), images, top_k=0)
