"""The log files of a pre-training run (rank 0): ``log.csv`` per step, ``history.json`` per epoch, ``loss.png``."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from sentizoo.progress import Logger

__all__ = ['RunLog']


class RunLog(Logger):
    """A logger of the training loop (rank 0): ``log.csv`` (a row every ``log_every`` steps and at each epoch's
    end), ``history.json`` (per epoch: ``epoch``, ``lr``, ``steps``, each loss term's mean) and ``loss.png``.
    On resume the CSV is cut back to the checkpoint's step: rows of steps trained again are not duplicated."""

    def __init__(self, folder: Path, log_every: int):
        self.csv_path, self.json_path, self.plot_path = folder / 'log.csv', folder / 'history.json', folder / 'loss.png'
        self.log_every, self.steps_per_epoch = log_every, 0
        self.fields: Optional[List[str]] = None

    def start(self, global_step: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        rows = []
        if global_step and self.csv_path.is_file():
            with open(self.csv_path, newline='') as f:
                rows = [r for r in csv.DictReader(f) if int(r['step']) <= global_step]
        self.csv_path.unlink(missing_ok=True)
        self._write_rows(rows, 'w')

    def _write_rows(self, rows: Sequence[Mapping[str, Any]], mode: str) -> None:
        if not rows:
            return
        self.fields = self.fields or list(rows[0])
        with open(self.csv_path, mode, newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            if mode == 'w':
                writer.writeheader()
            writer.writerows(rows)

    def log_step(self, row: Mapping[str, Any]) -> None:
        if row['step'] % self.log_every == 0 or row['step'] % self.steps_per_epoch == 0:
            self._write_rows([row], 'a' if self.fields is not None else 'w')

    def log_epoch(self, record: Mapping[str, Any], history: Mapping[str, Any]) -> None:
        epochs = [{'epoch': e['epoch'], 'lr': e['lr'], 'steps': self.steps_per_epoch, **e['train']}
                  for e in history['epochs']]
        self.json_path.write_text(json.dumps(epochs, indent=2) + '\n')
        self.plot()

    def plot(self) -> None:
        """Every loss term against the step, on a log scale when all values are positive."""
        import matplotlib  # training-only dependency, imported when first needed
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        with open(self.csv_path, newline='') as f:
            rows = list(csv.DictReader(f))
        terms = [k for k in rows[0] if k not in ('step', 'epoch', 'lr', 'time')]
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [int(r['step']) for r in rows]
        for term in terms:
            ax.plot(steps, [float(r[term]) for r in rows], lw=1.5 if term == 'loss' else 1, label=term)
        if all(float(r[t]) > 0 for r in rows for t in terms):
            ax.set_yscale('log')
        ax.set(xlabel='step', ylabel='training loss', title='pre-training loss per step')
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)
