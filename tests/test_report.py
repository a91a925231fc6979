"""training.report: the paper's layouts from sample result files, the paper's numbers beside ours only for
real data, synthetic results in their own section, the plots, and which result wins a slot."""
import itertools
import json
from pathlib import Path

import pytest

from training import report
from training.downstream import FORMAT

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_CLOCK = itertools.count(10)  # results finish in the order they are written


def _result(folder: Path, experiment: str, run: str, test: dict, *, arch='resnet50', dataset='fi', task='sll',
            table=1, mode='amalgamate', finished=None, losses=(2.0, 1.5, 1.2)) -> Path:
    primary = {'sll': 'accuracy', 'mll': 'hamming_loss', 'ldl': 'kl'}[task]
    epochs = [{'epoch': i + 1, 'train': {'loss': 2 * loss, 'task/target': loss},
               'val': {primary: 0.5 + 0.1 * i}} for i, loss in enumerate(losses)]
    data = {'format': FORMAT, 'experiment': experiment, 'run': run, 'mode': mode, 'init': 'hp', 'table': table,
            'arch': arch, 'dataset': dataset, 'task': task, 'synthetic': dataset == 'synthetic',
            'best_epoch': len(losses), 'val': epochs[-1]['val'], 'test': test, 'primary_metric': primary,
            'higher_is_better': task == 'sll', 'wall_seconds': 12.5, 'samples': {'train': 10, 'val': 2, 'test': 3},
            'history': {'epochs': epochs, 'best_epoch': len(losses)},
            'finished': finished or f'2026-01-01T00:00:{next(_CLOCK)}'}
    path = folder / experiment / f'{run}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / 'results'
    _result(folder, 'table1_resnet50_fi_sll', 'baseline', {'accuracy': 0.65}, mode='finetune')
    _result(folder, 'table1_resnet50_fi_sll', 'amalgamation', {'accuracy': 0.7})
    ldl = dict(chebyshev=0.3, clark=1.6, canberra=3.5, kl=0.45, cosine=0.8, intersection=0.65)
    _result(folder, 'table1_resnet18_abstract_ldl', 'amalgamation', ldl, arch='resnet18', dataset='abstract',
            task='ldl')
    for run, acc in (('none', 0.66), ('feat_hp', 0.684), ('logits_hp', 0.71)):
        _result(folder, 'table3_resnet50_fi_sll', run, {'accuracy': acc}, table=3)
    for arch, acc in (('vgg16_bn', 0.6), ('resnet18', 0.61)):
        _result(folder, f'table4_{arch}_fi_sll', 'with_tl', {'accuracy': acc}, arch=arch, table=4)
    _result(folder, 'demo', 'baseline', {'accuracy': 0.25}, arch='resnet18', dataset='synthetic', table=None,
            mode='finetune')
    _result(folder, 'demo', 'amalgamation', {'accuracy': 0.375}, arch='resnet18', dataset='synthetic', table=None)
    (folder / 'demo' / 'history.json').write_text('{"epochs": []}')  # not a result: skipped
    return folder


def _section(text: str, start: str, end: str = '\n## ') -> str:
    body = text.split(start, 1)[1]
    return body.split(end, 1)[0]


def test_report_puts_the_paper_beside_real_results_only(results):
    text = report.render(results).read_text(encoding='utf-8')
    real = _section(text, '## Real data')
    synthetic = _section(text, '## SYNTHETIC data')
    assert '| Dataset | Task | Metric | ResNet18 (ours) | ResNet18 (paper) | ResNet50 (ours) | ResNet50 (paper) |' in real
    assert '| FI | SLL | Acc ↑ | — | 0.654 → 0.673 | 0.650 → 0.700 | 0.670 → 0.707 |' in real
    assert '| Abstract | LDL | KL ↓ | — → 0.450 | 0.702 → 0.570 | — | 0.568 → 0.517 |' in real
    # Table 3 in percent, in the paper's row order, the paper's column beside ours
    assert ('| none | none (plain fine-tuning) | 66.00 | 66.95 |\n| feat_hp | feature reg: HP | 68.40 | 68.15 |\n'
            '| logits_hp | logits reg: HP | 71.00 | 70.20 |') in real
    assert ('| w/ teacher task loss | 60.00 | 66.57 | 61.00 | 67.27 |') in real
    assert report.SYNTHETIC_NOTE in synthetic
    assert '| Synthetic | SLL | Acc ↑ | 0.250 → 0.375 |' in synthetic
    assert '(paper)' not in synthetic and 'paper' not in synthetic.replace(report.SYNTHETIC_NOTE, '')
    assert '### demo (SYNTHETIC)' in text and '### table1_resnet50_fi_sll\n' in text


def test_runs_table_and_plots(results):
    out = results.parent / 'rendered'
    text = report.render(results, out).read_text(encoding='utf-8')
    assert ('| Run | Mode | Init | Best epoch | Acc ↑ (test) | Wall (s) |\n|---|---|---|---|---|---|\n'
            '| baseline | finetune | hp | 3/3 | 0.2500 | 12.5 |\n| amalgamation | amalgamate | hp | 3/3 | 0.3750 | 12.5 |'
            ) in text
    pngs = sorted(p.name for p in out.glob('*.png'))
    assert pngs == sorted(['demo.png', 'table1_resnet18_abstract_ldl.png', 'table1_resnet50_fi_sll.png',
                           'table3_resnet50_fi_sll.png', 'table4_resnet18_fi_sll.png', 'table4_vgg16_bn_fi_sll.png'])
    for name in pngs:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
        assert f'![{name[:-4]}]({name})' in text


def test_latest_result_wins_a_slot(results):
    _result(results, 'table1_resnet50_fi_sll_rerun', 'baseline', {'accuracy': 0.5}, mode='finetune',
            finished='2026-02-01T00:00:00')  # finished last
    assert '| FI | SLL | Acc ↑ | — | 0.654 → 0.673 | 0.500 → 0.700 |' in report.render(results, plots=False).read_text()


def test_empty_folder_and_cli(tmp_path, results, capsys):
    empty = tmp_path / 'nothing'
    empty.mkdir()
    assert 'No result files' in report.render(empty, plots=False).read_text()
    assert report.main([str(results), '--no-plots', '--out', str(tmp_path / 'md')]) == 0
    assert capsys.readouterr().out.startswith('# Downstream results\n\n10 run(s)')
    assert not list((tmp_path / 'md').glob('*.png'))
    assert report.main([str(tmp_path / 'absent')]) == 2
    assert 'is not a folder' in capsys.readouterr().err
