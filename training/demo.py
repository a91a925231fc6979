"""The whole method end to end on a laptop, with no data and no weights to download (results are SYNTHETIC).

    python -m training.demo                 # a few minutes on 2 CPU cores
    python -m training.demo --quick         # seconds: the smallest sizes (what the tests run)
    python -m training.demo --arch resnet18 # the study's backbone: several times longer
    python -m training.demo --out runs/demo --zoo runs/demo/zoo --threads 2

The demo is the synthetic study (:func:`training.study.run_study`) at its smallest useful size, the settings of
``training/configs/study/demo.json``: one world (seed 7, which no study uses), one downstream seed, no probes.
First a sample sheet of the world (``<out>/synthetic_samples.png``: procedural images whose emotion label depends
on colour, layout and object + state), then the study's phases, each timed:

1. **pretrain** ST, HO and HP models from a random start on their pretext tasks (:func:`training.pretrain.pretrain`),
   on timm's ``test_resnet``: a ResNet of four blocks and 0.37 M parameters (ResNet-18: 11.2 M), whose pretext
   steps cost a third of ResNet-18's (BENCHMARKS.md, "Demo"; ``--arch`` takes any timm backbone the heads read);
   on a CPU the three train at once, each in its own process with one thread (``--jobs``);
2. **pretext**: each task measured on held-out images beside its reference (:mod:`training.pretext_eval`: chance
   for the classification tasks, the trivial predictor for colorization and super-resolution, a unigram model for
   captioning), and the check that every one is at most ``pretext_eval.max_ratio`` (0.85x) of its reference;
3. **export** their backbones into a local zoo (default ``<out>/zoo``): folders ``senti_test_resnet.<tag>``, which
   ``timm.create_model('local-dir:<zoo>/senti_test_resnet.<tag>', pretrained=True)`` loads (for a zoo architecture,
   ``timm.create_model('senti_resnet18.<tag>', pretrained=True)`` with ``SENTIZOO_HOME`` set to the zoo);
4. **downstream**: the synthetic emotion task with 512 labels (:mod:`training.downstream`), teachers loaded from
   that zoo: fine-tuning from a random start (``random_init``; a fresh machine has no ImageNet
   weights), the same from the HP backbone (``hp_finetune``: what pre-training alone gives) and the amalgamation
   (:func:`sentizoo.amalgamate`: target from the HP backbone, the three models as teachers); same data, epochs and
   optimiser for all three, epoch selected on validation, accuracy on test;
5. **report**: ``<out>/study.md`` (the tables), ``<out>/study.json`` (every number and the phase times),
   ``downstream.png`` and ``downstream_curves.png``.

Whatever the numbers are, they come from synthetic data and say nothing about real visual sentiment. The
demo-scale deviations from the paper's recipe are listed in the settings file (``deviations``);
``python -m training.study`` runs the same method at the size where its pretext tasks reach competence, over seeds
(BENCHMARKS.md, "Synthetic study (exploratory)").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from sentizoo.models import ARCHS, stock_name, tagged_name

from .study import load_study_config, run_study
from .study_steps import add_jobs_argument

__all__ = ['DEMO_CONFIG', 'demo_config', 'load_command', 'run_demo', 'main']

DEMO_CONFIG = Path(__file__).parent / 'configs' / 'study' / 'demo.json'


def demo_config(quick: bool = False, seed: Optional[int] = None, arch: Optional[str] = None) -> Dict[str, Any]:
    """The demo's study settings (``--quick``: its ``quick`` section merged in); ``seed`` replaces the world's
    seed of the pre-training and of the downstream run, ``arch`` the backbone."""
    config = load_study_config(DEMO_CONFIG, quick=quick)
    if seed is not None:
        config['pretrain']['seed'] = seed
        config['downstream']['seeds'] = [seed]
    if arch is not None:
        config['arch'] = arch
    return config


def load_command(arch: str, zoo: Path) -> str:
    """The command that loads the demo's HP backbone as a user would: by its zoo name for a zoo architecture, from
    its folder (timm's ``local-dir:``) for another."""
    if stock_name(arch) in ARCHS:
        return (f"SENTIZOO_HOME={zoo} python -c \"import sentizoo, timm; "
                f"print(timm.create_model('{tagged_name(arch, 'hp')}', pretrained=True).num_features)\"")
    return (f"python -c \"import timm; print(timm.create_model('local-dir:{zoo.resolve() / tagged_name(arch, 'hp')}', "
            f"pretrained=True).num_features)\"")


def _sample_sheet(path: Path, seed: int, n: int = 16, size: int = 64) -> None:
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
             seed: Optional[int] = None, progress: bool = True, arch: Optional[str] = None,
             jobs: Optional[int] = None) -> Dict[str, Any]:
    """The sample sheet, then :func:`~training.study.run_study` with :func:`demo_config`; returns its record."""
    config = demo_config(quick, seed, arch)
    out = Path(out)
    zoo = Path(zoo) if zoo is not None else out / 'zoo'
    out.mkdir(parents=True, exist_ok=True)
    _sample_sheet(out / 'synthetic_samples.png', seed=config['pretrain']['seed'])
    print(f'Sample images of the synthetic affect world (seed {config["pretrain"]["seed"]}): '
          f'{out / "synthetic_samples.png"}\n', flush=True)
    record = run_study(out, config, progress=progress, zoo=zoo, jobs=jobs)
    print(f'\nLoad a model as a user would: {load_command(config["arch"], zoo)}', flush=True)
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m training.demo', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, default=Path('runs/demo'), help='output folder (default: runs/demo)')
    p.add_argument('--zoo', type=Path, help='zoo folder for the exported models (default: <out>/zoo)')
    p.add_argument('--quick', action='store_true', help='the smallest sizes: seconds instead of minutes')
    p.add_argument('--seed', type=int, help='seed of the world, the models and the training (default: 7, a world '
                                            'that no study uses)')
    p.add_argument('--arch', help="the backbone, a timm architecture (default: the settings' test_resnet, a tiny "
                                  "ResNet; resnet18 is the study's and takes several times longer)")
    p.add_argument('--threads', type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
    add_jobs_argument(p)
    args = p.parse_args(argv)
    if args.arch is not None:  # a backbone the pretext heads cannot read fails here, before anything is written
        from .perception import check_arch
        try:
            check_arch(args.arch)
        except ValueError as e:
            p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(args.out, args.zoo, args.quick, args.seed, args.progress, args.arch, args.jobs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
