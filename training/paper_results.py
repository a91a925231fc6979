"""The paper's published numbers (Tables 1, 3 and 4), transcribed for the report to put beside ours.

Source: Feng, Liu, Yang, "Probing Sentiment-Oriented Pre-Training Inspired by Human Sentiment Perception
Mechanism", CVPR 2023. Only numbers printed in the paper are here; nothing is derived or filled in.

* **Table 1**: ``TABLE1[(dataset, task, metric, arch)] = (imagenet, ours)``, "ImageNet initialisation,
  plain fine-tuning" on the left of the paper's arrow and "the proposed method" on the right. Dataset and
  metric names are sentizoo's (:func:`training.datasets.emotion.get_dataset`, :mod:`sentizoo.tasks`):
  the paper's "EM" is Emotic, "E6" Emotion6, "AB" Abstract, "UB" UnBiasedEmo; its "Vgg16"/"Vgg19" are the
  batch-normalised VGGs of the zoo.
* **Table 3** (ResNet50, FI accuracy): ``TABLE3[run]`` for the run names of
  ``training/configs/table3_*.json``. The paper prints percentages; they are stored as fractions (/100).
  Its first row (no regularisation, 66.95) matches Table 1's ResNet50 ImageNet baseline on FI (0.670),
  so it is read as that baseline. The "Feature Reg" column regularises only the features of the ticked
  teachers' stages, the "Logits Reg" column only the logits towards the ticked teachers; the paper does
  not say whether the teachers' task losses were on, and our configs keep the method's default (on).
* **Table 4** (FI accuracy): ``TABLE4[(arch, run)]`` with run ``'without_tl'`` / ``'with_tl'``: the
  amalgamation without / with the teachers' task losses (the paper's "target loss"), as fractions.
"""
from __future__ import annotations

from typing import Dict, Tuple

__all__ = ['ARCHS', 'TABLE1_ROWS', 'TABLE1', 'TASK_METRICS', 'TABLE3', 'TABLE3_ROWS', 'TABLE4', 'TABLE4_ROWS',
           'METRIC_LABELS', 'LOWER_IS_BETTER', 'DATASET_LABELS']

ARCHS = ('vgg16_bn', 'vgg19_bn', 'resnet18', 'resnet50', 'resnet101')
"""Table 1's columns, in the paper's order."""

DATASET_LABELS = {'fi': 'FI', 'unbiasedemo': 'UnBiasedEmo', 'emotic': 'Emotic', 'emotion6': 'Emotion6',
                  'abstract': 'Abstract', 'emoset': 'EmoSet', 'synthetic': 'Synthetic'}
METRIC_LABELS = {'accuracy': 'Acc', 'hamming_loss': 'Hamming', 'ranking_loss': 'Ranking', 'micro_f1': 'MicroF1',
                 'macro_f1': 'MacroF1', 'chebyshev': 'Chebyshev', 'clark': 'Clark', 'canberra': 'Canberra',
                 'kl': 'KL', 'cosine': 'Cosine', 'intersection': 'Intersection'}
LOWER_IS_BETTER = frozenset({'hamming_loss', 'ranking_loss', 'chebyshev', 'clark', 'canberra', 'kl'})

# dataset task metric, then (imagenet ours) for each of ARCHS; copied row by row from Table 1
_TABLE1_TEXT = """
fi          sll accuracy     0.648 0.666  0.655 0.679  0.654 0.673  0.670 0.707  0.688 0.708
unbiasedemo sll accuracy     0.773 0.839  0.770 0.846  0.816 0.836  0.821 0.839  0.823 0.859
emotic      mll hamming_loss 0.151 0.147  0.149 0.145  0.163 0.145  0.155 0.154  0.136 0.137
emotic      mll ranking_loss 0.159 0.155  0.158 0.154  0.161 0.154  0.145 0.143  0.155 0.152
emotic      mll micro_f1     0.155 0.199  0.156 0.219  0.153 0.214  0.218 0.219  0.204 0.226
emotic      mll macro_f1     0.024 0.038  0.026 0.042  0.026 0.040  0.041 0.043  0.046 0.049
emotion6    mll hamming_loss 0.260 0.180  0.253 0.171  0.248 0.187  0.256 0.221  0.158 0.157
emotion6    mll ranking_loss 0.294 0.226  0.295 0.229  0.282 0.236  0.191 0.160  0.216 0.216
emotion6    mll micro_f1     0.809 0.846  0.808 0.845  0.817 0.842  0.831 0.849  0.848 0.849
emotion6    mll macro_f1     0.726 0.825  0.718 0.823  0.776 0.817  0.798 0.827  0.825 0.827
emotion6    ldl chebyshev    0.335 0.322  0.337 0.326  0.278 0.276  0.252 0.251  0.259 0.253
emotion6    ldl clark        1.669 1.660  1.672 1.662  1.636 1.629  1.614 1.615  1.621 1.618
emotion6    ldl canberra     3.768 3.721  3.775 3.732  3.620 3.587  3.516 3.514  3.533 3.533
emotion6    ldl kl           0.637 0.597  0.642 0.608  0.466 0.464  0.403 0.402  0.405 0.391
emotion6    ldl cosine       0.697 0.716  0.694 0.710  0.786 0.788  0.822 0.823  0.818 0.835
emotion6    ldl intersection 0.553 0.573  0.551 0.568  0.634 0.636  0.666 0.669  0.684 0.687
abstract    ldl chebyshev    0.268 0.266  0.267 0.267  0.279 0.259  0.256 0.247  0.258 0.249
abstract    ldl clark        1.663 1.658  1.660 1.660  1.714 1.677  1.662 1.644  1.653 1.655
abstract    ldl canberra     3.950 3.930  3.928 3.924  4.086 3.940  3.936 3.835  3.886 3.880
abstract    ldl kl           0.580 0.568  0.573 0.571  0.702 0.570  0.568 0.517  0.554 0.536
abstract    ldl cosine       0.702 0.710  0.707 0.708  0.642 0.711  0.707 0.743  0.719 0.731
abstract    ldl intersection 0.579 0.585  0.584 0.585  0.553 0.595  0.587 0.614  0.597 0.605
"""


Row = Tuple[str, str, str]  # dataset, task, metric


def _parse_table1(text: str) -> Tuple[Tuple[Row, ...], Dict[Tuple[str, str, str, str], Tuple[float, float]]]:
    rows, table = [], {}
    for line in text.strip().splitlines():
        dataset, task, metric, *values = line.split()
        assert len(values) == 2 * len(ARCHS), line
        rows.append((dataset, task, metric))
        for k, arch in enumerate(ARCHS):
            table[(dataset, task, metric, arch)] = (float(values[2 * k]), float(values[2 * k + 1]))
    return tuple(rows), table


TABLE1_ROWS, TABLE1 = _parse_table1(_TABLE1_TEXT)
"""``TABLE1_ROWS``: the ``(dataset, task, metric)`` rows in the paper's order; ``TABLE1``: see the module doc."""
TASK_METRICS = {task: tuple(dict.fromkeys(m for _, t, m in TABLE1_ROWS if t == task))
                for task in ('sll', 'mll', 'ldl')}
"""The metrics the paper reports for each task, in its order."""

# Table 3 (ResNet50, FI): run name -> (description, accuracy as a fraction)
TABLE3_ROWS = {
    'none': 'none (plain fine-tuning)',
    'feat_st': 'feature reg: ST', 'feat_ho': 'feature reg: HO', 'feat_hp': 'feature reg: HP',
    'feat_all': 'feature reg: ST + HO + HP',
    'logits_st': 'logits reg: ST', 'logits_ho': 'logits reg: HO', 'logits_hp': 'logits reg: HP',
    'logits_all': 'logits reg: ST + HO + HP',
}
TABLE3 = {'none': 0.6695, 'feat_st': 0.6783, 'feat_ho': 0.6789, 'feat_hp': 0.6815, 'feat_all': 0.6892,
          'logits_st': 0.6638, 'logits_ho': 0.6950, 'logits_hp': 0.7020, 'logits_all': 0.6883}

TABLE4_ROWS = {'without_tl': 'w/o teacher task loss', 'with_tl': 'w/ teacher task loss'}
TABLE4 = {(arch, run): value for run, values in (
    ('without_tl', (0.6246, 0.6419, 0.6589, 0.6927, 0.7021)),
    ('with_tl', (0.6657, 0.6789, 0.6727, 0.7068, 0.7077)),
) for arch, value in zip(ARCHS, values)}
