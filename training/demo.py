"""The whole method end to end on a laptop, with no data and no weights to download (results are SYNTHETIC).

    python -m training.demo                 # a few minutes on 2 CPU cores
    python -m training.demo --quick         # seconds: the smallest sizes (what the tests run)
    python -m training.demo --out runs/demo --zoo runs/demo/zoo --threads 2

Six phases, each timed:

1. **data**: the synthetic affect world (:mod:`training.datasets.synthetic`): procedural images whose emotion
   label depends on colour (low level), layout (mid level) and object + state (high level); a sample sheet
   is written to ``<out>/synthetic_samples.png``;
2. **pretrain**: small ST, HO and HP ResNet18 models (:func:`training.pretrain.pretrain`, random
   initialisation, the pretext tasks on synthetic images, the settings of the synthetic study
   (:mod:`training.study`) with fewer steps); each task is then measured on held-out images and printed
   beside its reference (:mod:`training.pretext_eval`: chance for the classification tasks, the trivial
   predictor for colorization and super-resolution, a unigram model for captioning);
3. **export**: their backbones into a local zoo (:func:`training.export.export`; default ``<out>/zoo``);
4. **load**: ``timm.create_model('senti_resnet18.<tag>', pretrained=True)`` with ``SENTIZOO_HOME`` set to
   that zoo, as a user would load the published weights;
5. **finetune**: the downstream experiment ``training/configs/demo.json`` (:mod:`training.downstream`): a
   baseline fine-tuned with :func:`sentizoo.engine.finetune` from a random initialisation (a fresh machine
   has no ImageNet weights), the same fine-tuning from the HP backbone (``hp_finetune``: what pre-training
   alone gives) and the amalgamation (:func:`sentizoo.amalgamate`: target from the HP backbone, the three
   models as teachers); same data, epochs and optimiser for all three, epoch selected on validation,
   metrics on test;
6. **report**: the side-by-side table (printed) and the loss / validation curves
   (``<out>/report/demo.png``, report in ``<out>/report/report.md``).

Phase times go to ``<out>/timings.json``. Whatever the numbers are, they come from synthetic data and say
nothing about real visual sentiment.

Demo-scale deviations from the paper's recipe (so that it fits ~5 minutes on 2 CPU cores): random
initialisation instead of ImageNet; 64 px crops; the study's pre-training settings (SGD lr 0.1 for ST and
0.05 for HO and HP, batch 32, lr /10 for the last of 4 epochs; every synthetic image seen once) for 240 (ST),
200 (HO) and 260 (HP) steps instead of the study's 2,700 / 800 / 1,200 and the paper's 12-30 epochs; downstream 512
training images, 4 epochs at lr 0.05 (the paper: 1e-3 for 30 epochs from ImageNet weights) with the lr
divided by 10 for the last one. ``python -m training.study`` runs the same method at the size where its
pretext tasks reach competence, over seeds (BENCHMARKS.md, "Synthetic study (exploratory)").
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from sentizoo.models import BACKBONE_TAGS

__all__ = ['PRETRAIN_STEPS', 'QUICK', 'pretrain_settings', 'run_demo', 'main']

ARCH = 'resnet18'
PRETRAIN_STEPS = {'st': 60, 'ho': 50, 'hp': 65}
"""Pre-training steps per epoch of each model (4 epochs); every other setting is the synthetic study's."""
QUICK: Dict[str, Any] = {
    'pretrain': {'image_size': 32, 'batch_size': 4, 'epochs': 1, 'steps_per_epoch': 2, 'max_samples': 8},
    'pretext_samples': 8,
    'downstream': {'image_size': 32, 'data': {'n_train': 16, 'n_val': 8, 'n_test': 8}, 'batch_size': 8,
                   'eval_batch_size': 8, 'train': {'epochs': 2, 'step_size': 1}},
}
"""``--quick``: overrides of :func:`pretrain_settings` and of ``configs/demo.json`` (seconds, for the tests)."""
PRETEXT_SAMPLES = 300
"""Held-out images per pretext task for the measurement printed after pre-training."""


def pretrain_settings(tag: str, quick: bool = False) -> Dict[str, Any]:
    """The :class:`~training.pretrain.PretrainConfig` fields of the demo's ``tag`` model: the synthetic
    study's (``configs/study/default.json``, ``tag``'s own settings included) with :data:`PRETRAIN_STEPS` steps
    per epoch."""
    from .study import load_study_config
    study = load_study_config()
    settings = dict(study['pretrain']['common'], **study['pretrain'][tag], image_size=study['image_size'])
    settings['steps_per_epoch'] = PRETRAIN_STEPS[tag]
    settings['max_samples'] = settings['epochs'] * settings['steps_per_epoch'] * settings['batch_size']
    return dict(settings, **QUICK['pretrain']) if quick else settings


def _sample_sheet(path: Path, n: int = 16, seed: int = 0, size: int = 64) -> None:
    """A grid of synthetic images titled with their emotion (SLL label) and ANP."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .datasets.synthetic import ADJECTIVES, EMOTIONS, NOUNS, AffectWorld
    world = AffectWorld(seed, size)
    fig, axes = plt.subplots(2, n // 2, figsize=(n // 2 * 1.4, 4.2))
    for i, ax in enumerate(axes.flat):
        image, cues = world.sample(i)
        ax.imshow(image)
        ax.set_title(f'{EMOTIONS[cues.emotion]}\n{ADJECTIVES[cues.adjective]} {NOUNS[cues.noun]}', fontsize=7)
        ax.axis('off')
    fig.suptitle('Synthetic affect world (SYNTHETIC): emotion label and adjective-noun pair', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(out: Path = Path('runs/demo'), zoo: Optional[Path] = None, quick: bool = False,
             seed: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Run the six phases; returns ``{'results': [result dicts], 'table': markdown, 'seconds': {phase: s}}``.

    ``seed`` (of the world, the models and the training) defaults to ``demo.json``'s, a world no study uses.
    """
    # One function over 60 lines: the six phases read top to bottom, as the README tells them, and share the
    # settings and the timer; each phase is a few calls into the training modules.
    import timm

    import sentizoo
    from sentizoo.weights import resolve_weights

    from .downstream import load_config, merge_config, run_experiment, validate_config
    from .export import export
    from .pretext_eval import format_scores
    from .report import SYNTHETIC_NOTE, load_results, render, runs_table
    from .study_steps import Phases, measure_pretext, pretrain_model, using_zoo

    out = Path(out)
    zoo = Path(zoo) if zoo is not None else out / 'zoo'
    pretrain = {tag: pretrain_settings(tag, quick) for tag in BACKBONE_TAGS}
    config = load_config('demo')
    config = validate_config(merge_config(config, QUICK['downstream']) if quick else config, config['source'])
    seed = config['data']['seed'] if seed is None else seed
    config['train']['seed'] = config['data']['seed'] = seed
    out.mkdir(parents=True, exist_ok=True)
    phase = Phases(6)

    with phase('data', 'Generating the synthetic affect world (colour, layout, object + state -> emotion)'):
        d = config['data']
        print(f'      {d["n_train"]}/{d["n_val"]}/{d["n_test"]} train/val/test images for the emotion task and '
              f'{"/".join(str(pretrain[t]["max_samples"]) for t in BACKBONE_TAGS)} per ST/HO/HP pretext task, '
              f'rendered on the fly (seed {seed}); sample sheet: {out / "synthetic_samples.png"}')
        _sample_sheet(out / 'synthetic_samples.png', seed=seed)
    checkpoints: Dict[str, Path] = {}
    with phase('pretrain', f'Pre-training small ST, HO and HP {ARCH} models on synthetic pretext tasks'):
        for tag in BACKBONE_TAGS:
            checkpoints[tag] = pretrain_model(tag, ARCH, out / 'pretrain' / tag, pretrain[tag], seed=seed,
                                              progress=progress)
            scores = measure_pretext(checkpoints[tag], QUICK['pretext_samples'] if quick else PRETEXT_SAMPLES, 100)
            print(f'      {tag.upper()} on held-out images: {format_scores(scores)}', flush=True)
    with phase('export', f'Exporting the backbones into the zoo {zoo}'):
        for tag in BACKBONE_TAGS:
            with contextlib.redirect_stdout(io.StringIO()):  # export prints the registry line for maintainers
                exported = export(checkpoints[tag], tag, out=zoo / f'senti_{ARCH}.{tag}')
            print(f'      {exported.name}: {exported.folder} (sha256 {exported.sha256[:12]}…)')
    with using_zoo(zoo):
        with phase('load', f"Loading them back: timm.create_model('senti_{ARCH}.<tag>', pretrained=True), "
                           f'SENTIZOO_HOME={zoo}'):
            for tag in BACKBONE_TAGS:
                name = f'senti_{ARCH}.{tag}'
                model = timm.create_model(name, pretrained=True)
                params = sum(p.numel() for p in model.parameters()) / 1e6
                print(f'      {name}: {params:.1f}M parameters from {resolve_weights(name)}')
        with phase('finetune', 'Fine-tuning on the synthetic emotion task: baseline, hp_finetune, amalgamation'):
            run_experiment(config, out=out / 'results', progress=progress)
    with phase('report', 'Writing the report and the plot'):
        results = [r for r in load_results(out / 'results') if r['experiment'] == config['name']]
        render(out / 'results', out / 'report')
        table = runs_table(results)
    print(f'\n{SYNTHETIC_NOTE}\n\nSYNTHETIC results ({ARCH}, {config["task"].upper()}, test split, epoch selected '
          f'on validation):\n\n{table}\n\nPlot: {out / "report" / (config["name"] + ".png")}; '
          f'report: {out / "report" / "report.md"}\n')
    total = round(sum(phase.seconds.values()), 2)
    timings = {'seconds': phase.seconds, 'total_seconds': total, 'quick': quick, 'threads': torch.get_num_threads(),
               'sentizoo': sentizoo.__version__}
    (out / 'timings.json').write_text(json.dumps(timings, indent=2) + '\n')
    print('Phase times: ' + ', '.join(f'{k} {v:.1f} s ({100 * v / total:.0f}%)' for k, v in phase.seconds.items())
          + f'; total {total:.1f} s')
    return {'results': results, 'table': table, 'seconds': phase.seconds}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m training.demo', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, default=Path('runs/demo'), help='output folder (default: runs/demo)')
    p.add_argument('--zoo', type=Path, help='zoo folder for the exported models (default: <out>/zoo)')
    p.add_argument('--quick', action='store_true', help='the smallest sizes: seconds instead of minutes')
    p.add_argument('--seed', type=int, help="seed of the data, the models and the training (default: demo.json's, "
                                            'a world that no study uses)')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s choice)')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(args.out, args.zoo, args.quick, args.seed, args.progress)
    return 0


if __name__ == '__main__':
    sys.exit(main())
