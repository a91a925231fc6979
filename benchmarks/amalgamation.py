"""Cost of an amalgamation training step against a plain fine-tuning step of the same target.

For each architecture, with the same batch and input size:

* ``plain``: the target alone (forward, cross-entropy, backward, SGD step);
* ``exact``: the paper's amalgamation (four models, every term, nothing frozen);
* ``frozen``: ``freeze_teachers=True`` (teachers in eval mode under no_grad, stopping at their last tap),

then a few levers on the last architecture (each row of the lever table changes one setting of the
default), and the cost of the adapters that bridge a target and teachers of another architecture
(``--adapters convnext_tiny resnet50``, the "## Adapter cost" section):

* ``cross``: the amalgamation of that target with those teachers, adapters included;
* ``cross_free``: the same step with each adapter replaced by a stand-in that costs nothing (a view of the
  target's tap, expanded to the teacher's channels: no parameters, no arithmetic, the gradient still flows
  into the target's tap);
* ``adapters``: the adapters' own work alone, on the taps of the same batch: forward (and resize where the maps
  differ), the feature MSE, backward, SGD update. ``adapters / cross_free`` is what they add; ``cross /
  cross_free``, the end-to-end check, is noisier on shared cores;
* ``exact`` of the teachers' architecture for context: the paper's step with that target (a ratio that also
  holds the two targets' difference, so not the adapters' cost).

The modes' steps are interleaved in one process, so every
mode sees the same background load on shared cores, and the fastest round is reported. Peak memory is
measured for each mode alone in its own process: ``ru_maxrss`` above the footprint after imports (CPU) or
``torch.cuda.max_memory_allocated`` (GPU, where steps run under bf16 autocast). The results replace the
"## Amalgamation step" section of BENCHMARKS.md.

    python benchmarks/amalgamation.py             # full run (a few minutes on 2 CPU cores)
    python benchmarks/amalgamation.py --only adapters --img-size 128 --rounds 5   # the adapter cost alone
    python benchmarks/amalgamation.py --quick     # smoke test: tiny sizes, BENCHMARKS.md untouched
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch.nn as nn

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / 'BENCHMARKS.md'
SECTION = '## Amalgamation step'
ADAPTER_SECTION = '## Adapter cost'
NUM_CLASSES = 8
MODES = ('plain', 'exact', 'frozen')


# --- measurements (each run in its own subprocess) ------------------------------------------------------

def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


class _FreeAdapter(nn.Module):
    """Stands in for an adapter at no cost: the tap's first channel, expanded (a view) to ``channels``."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x[:, :1].expand(-1, self.channels, -1, -1)


def _step_fn(arch: str, mode: str, device: str, channels_last: bool, optimizer: str, side_by_side: bool,
             teachers_arch: str = ''):
    """A closure running one training step of ``mode`` (or ``frozen_full``: frozen without early stop; ``cross``
    and ``cross_free``: with ``teachers_arch`` teachers, adapters real or free; ``adapters``: their work alone)."""
    import timm
    import torch
    import torch.nn.functional as F

    from sentizoo.amalgamation import TEACHER_TAGS, Amalgamator
    from sentizoo.runtime import sgd

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=NUM_CLASSES)
    if mode != 'plain':
        frozen = mode.startswith('frozen')
        # frozen teachers stand in for ones with trained heads (so the logits term stays); exact ones get fresh heads
        teachers = {t: timm.create_model(teachers_arch if mode.startswith('cross') or mode == 'adapters' else arch,
                                         num_classes=NUM_CLASSES if frozen else 0) for t in TEACHER_TAGS}
        model = Amalgamator(model, teachers, freeze_teachers=frozen,
                            side_by_side=None if side_by_side else False)  # None: the library's choice
        if mode == 'frozen_full':  # the lever switched off: every teacher runs to its head
            model._teacher_needs_logits = lambda tag: True
        if mode == 'cross_free':  # stand-ins without parameters: nothing for the optimizer either
            for tag, adapter in model.adapters.items():
                model.adapters[tag] = _FreeAdapter(adapter[0].out_channels)
    model.train().to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    params = [p for p in (model.adapters if mode == 'adapters' else model).parameters() if p.requires_grad]
    hyper = dict(lr=1e-3, momentum=0.9, weight_decay=1e-4)
    opt = (sgd(params, **hyper) if optimizer == 'fused'  # the engine's optimizer
           else torch.optim.SGD(params, **hyper, foreach=optimizer == 'foreach'))
    if mode == 'adapters':
        return _adapters_alone(model, opt)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=device.startswith('cuda')):
            loss = F.cross_entropy(model(x), y) if mode == 'plain' else model(x, y).loss
        loss.backward()
        opt.step()
    return step


def _adapters_alone(model: nn.Module, opt) -> callable:
    """A step of the adapters' own work in ``model`` (an Amalgamator): forward, the feature MSE, backward (into
    the target's taps too) and SGD update, on the taps of the batch, which the first call computes. On one torch
    thread, as in the step, where they run in the target's worker (and two threads on busy cores spin)."""
    import torch
    import torch.nn.functional as F

    from sentizoo.adapters import resize_to
    from sentizoo.amalgamation import STAGE_TEACHER
    from sentizoo.stages import stage_features

    taps = {}

    def step(x, y):
        if not taps:
            with torch.no_grad():
                ours = stage_features(model.target, x)[0]
                taps.update({tag: (ours[s - 1].requires_grad_(),
                                   stage_features(model.teachers[tag], x, (s,), with_logits=False)[0][0])
                             for s, tag in STAGE_TEACHER.items() if tag in model.adapters})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            opt.zero_grad(set_to_none=True)
            for tap, _ in taps.values():
                tap.grad = None
            sum(F.mse_loss(resize_to(model.adapters[tag](tap), theirs), theirs) for tag, (tap, theirs) in taps.items()
                ).backward()
            opt.step()
        finally:
            torch.set_num_threads(threads)
    return step


def measure(arch: str, modes: list, batch_size: int, img_size: int, rounds: int, device: str,
            channels_last: bool, optimizer: str, threads: int, side_by_side: bool, malloc: str,
            teachers_arch: str = '') -> dict:
    """Fastest wall and process-CPU ms/step of each mode over ``rounds`` interleaved rounds (after a warm-up
    round), and the peak memory of the process (meaningful when it ran one mode). A mode may name its
    architecture, ``'exact:resnet50'``."""
    import timm  # noqa: F401  (imported before the baseline footprint is taken)
    import torch

    import sentizoo.amalgamation  # noqa: F401

    torch.set_num_threads(threads)
    cuda = device.startswith('cuda')
    base_mib = _rss_mib()
    steps = {mode: _step_fn(mode.partition(':')[2] or arch, mode.partition(':')[0], device, channels_last, optimizer,
                            side_by_side, teachers_arch) for mode in modes}
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    wall, cpu = {mode: [] for mode in modes}, {mode: [] for mode in modes}
    for _ in range(1 + rounds):
        for mode, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step(x, y)
            if cuda:
                torch.cuda.synchronize()
            wall[mode].append(time.perf_counter() - start)
            cpu[mode].append(time.process_time() - start_cpu)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mib)
    fastest = lambda times: {mode: 1000 * min(t[1:]) for mode, t in times.items()}  # noqa: E731
    return dict(ms=fastest(wall), cpu_ms=fastest(cpu), peak_mib=peak)


# glibc malloc keeping the memory it frees (as jemalloc and tcmalloc do), so that no mode pays the page faults
# of re-growing a heap that the other mode's frees returned to the OS.
KEEP_FREED_MEMORY = {'MALLOC_TRIM_THRESHOLD_': str(2 ** 34), 'MALLOC_TOP_PAD_': str(2 ** 29),
                     'MALLOC_MMAP_THRESHOLD_': str(2 ** 25)}


def run_one(**kwargs) -> dict:
    """``measure`` in a fresh interpreter, so its peak memory is its own."""
    env = dict(os.environ, **(KEEP_FREED_MEMORY if kwargs['malloc'] == 'keep' else {}))
    out = subprocess.run([sys.executable, __file__, '--worker', json.dumps(kwargs)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the benchmark ---------------------------------------------------------------------------------------

def machine(device: str) -> str:
    import timm
    import torch
    if device.startswith('cuda'):
        what = torch.cuda.get_device_name()
    else:
        lscpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
        model = re.search(r'Model name:\s*(.+)', lscpu)
        what = f'{model.group(1) if model else platform.processor()}, {torch.get_num_threads()} threads'
    return f'{what}; Python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}'


def main_table(archs: list, common: dict, setting: dict, rounds: int) -> list:
    lines = ['| arch | mode | wall ms/step | vs plain | CPU ms/step | vs plain | peak MiB | vs plain |',
             '|---|---|---|---|---|---|---|---|']
    for arch in archs:
        run = run_one(arch=arch, modes=list(MODES), rounds=rounds, **common, **setting)
        ms, cpu = run['ms'], run['cpu_ms']
        mem = {mode: run_one(arch=arch, modes=[mode], rounds=1, **common, **setting)['peak_mib'] for mode in MODES}
        for mode in MODES:
            lines.append(f'| {arch} | {mode} | {ms[mode]:.0f} | {ms[mode] / ms["plain"]:.2f}x '
                         f'| {cpu[mode]:.0f} | {cpu[mode] / cpu["plain"]:.2f}x '
                         f'| {mem[mode]:.0f} | {mem[mode] / mem["plain"]:.2f}x |')
            print(lines[-1], flush=True)
    return lines


def lever_table(arch: str, common: dict, default: dict, rounds: int) -> list:
    lines = ['| setting | plain wall ms/step | amalgamation wall ms/step | ratio | CPU-time ratio |',
             '|---|---|---|---|---|']

    def add(name, run, mode):
        ms, cpu = run['ms'], run['cpu_ms']
        lines.append(f'| {name} | {ms["plain"]:.0f} | {ms[mode]:.0f} | {ms[mode] / ms["plain"]:.2f}x '
                     f'| {cpu[mode] / cpu["plain"]:.2f}x |')
        print(lines[-1], flush=True)

    for name, setting in [('exact, models side by side + fused SGD (default)', default),
                          ('exact, models one after another', dict(default, side_by_side=False)),
                          ('exact, foreach SGD', dict(default, optimizer='foreach')),
                          ('exact, for-loop SGD', dict(default, optimizer='loop')),
                          ('exact, channels_last', dict(default, channels_last=True)),
                          ('exact, 1 thread (so one model at a time)', dict(default, threads=1)),
                          ('exact, glibc malloc defaults', dict(default, malloc='default'))]:
        add(name, run_one(arch=arch, modes=['plain', 'exact'], rounds=rounds, **common, **setting), 'exact')
    run = run_one(arch=arch, modes=['plain', 'frozen', 'frozen_full'], rounds=rounds, **common, **default)
    add('frozen, teachers stop at their last tap (default)', run, 'frozen')
    add('frozen, teachers run their whole network', run, 'frozen_full')
    return lines


def adapter_table(target: str, teachers: str, common: dict, default: dict, rounds: int) -> list:
    """The adapters' cost in a cross-architecture step, two ways in one interleaved run: their own work
    (``adapters``) and the end-to-end difference (``cross`` against ``cross_free``), both against ``cross_free``."""
    import timm

    from sentizoo.adapters import build_adapters
    from sentizoo.amalgamation import STAGE_TEACHER

    exact = f'exact:{teachers}'
    run = run_one(arch=target, modes=['plain', 'cross_free', 'cross', 'adapters', exact], rounds=rounds,
                  teachers_arch=teachers, **common, **default)
    ms, cpu = run['ms'], run['cpu_ms']
    model, teacher = timm.create_model(target), timm.create_model(teachers)
    adapters = build_adapters(model, {tag: (teacher, s) for s, tag in STAGE_TEACHER.items()})
    shapes = ', '.join(f'{tag} {a[0].in_channels}->{a[0].out_channels}' for tag, a in adapters.items())
    params = sum(p.numel() for p in adapters.parameters()) / 1e6
    rows = [('plain', f'{target} alone'), ('cross_free', f'{target} + {teachers} teachers, adapters free (stand-ins)'),
            ('cross', f'{target} + {teachers} teachers, adapters ({shapes}; {params:.2f}M parameters)'),
            ('adapters', 'the adapters\' own work alone, 1 thread (forward, MSE, backward, SGD update)'),
            (exact, f'{teachers} + {teachers} teachers (the paper\'s setting, no adapters)')]
    lines = ['| step | wall ms/step | vs adapters free | CPU ms/step | vs adapters free |', '|---|---|---|---|---|']
    for mode, name in rows:
        lines.append(f'| {name} | {ms[mode]:.0f} | {ms[mode] / ms["cross_free"]:.3f}x '
                     f'| {cpu[mode]:.0f} | {cpu[mode] / cpu["cross_free"]:.3f}x |')
        print(lines[-1], flush=True)
    share = cpu['adapters'] / cpu['cross_free']
    return lines + ['', f'The adapters\' own work adds **{100 * share:.1f}%** of CPU time to a {target} amalgamation '
                        f'step with {teachers} teachers ({100 * ms["adapters"] / ms["cross_free"]:.1f}% of its wall '
                        f'time; goal: at most 5%, {"met" if share <= 0.05 else "not met"}). End to end, the step with '
                        f'adapters took {ms["cross"] / ms["cross_free"]:.3f}x the wall time of the step with free '
                        f'stand-ins ({cpu["cross"] / cpu["cross_free"]:.3f}x CPU time): on shared cores a difference '
                        'of a few percent is within the noise of such a pair, which is why the adapters\' work is '
                        'also timed alone.']


def write_section(section: str) -> None:
    """Replace (or append) the section of BENCHMARKS.md titled by ``section``'s first line, leaving the others."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else '# Benchmarks\n'
    pattern = re.compile(rf'^{re.escape(section.splitlines()[0])}\n.*?(?=^## |\Z)', re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + '\n', text).rstrip('\n') + '\n'
    else:
        text = text.rstrip('\n') + '\n\n' + section
    BENCHMARKS_MD.write_text(text)
    print(f'wrote {BENCHMARKS_MD}')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--archs', nargs='+', default=['resnet18', 'resnet50'])
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--rounds', type=int, default=4, help='timed rounds after one warm-up round')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--adapters', nargs=2, default=['convnext_tiny', 'resnet50'], metavar=('TARGET', 'TEACHERS'),
                   help='the cross-architecture pair whose adapter cost is measured (default: %(default)s)')
    p.add_argument('--only', choices=('steps', 'adapters'), help='write only that section of BENCHMARKS.md')
    p.add_argument('--quick', action='store_true', help='tiny smoke run; BENCHMARKS.md is not written')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
        return
    if args.quick:
        args.archs, args.batch_size, args.img_size, args.rounds = ['resnet18'], 2, 64, 1
        args.adapters = ['resnet18', 'resnet50']

    common = dict(batch_size=args.batch_size, img_size=args.img_size, device=args.device)
    # what the engine does on CPU (the lever table varies one setting at a time)
    default = dict(channels_last=False, optimizer='fused', threads=args.threads, side_by_side=True, malloc='keep')
    command = ' '.join(['python benchmarks/amalgamation.py', *sys.argv[1:]])
    setting = (f'batch {args.batch_size}, {args.img_size} px, {args.device}, SGD (momentum 0.9, weight decay, fused: '
               'the engine\'s); the Amalgamator\'s default `side_by_side` (on CPU the four models run in two worker '
               'threads of one torch thread each); glibc malloc told to keep freed memory (`MALLOC_TRIM_THRESHOLD_`, '
               '`MALLOC_TOP_PAD_`, `MALLOC_MMAP_THRESHOLD_`, as jemalloc and tcmalloc do)')
    rounds = (f'The modes\' steps run interleaved in one process; fastest of {args.rounds} rounds after a warm-up '
              'round. CPU ms: process CPU time (all threads).')
    for title, table in ((SECTION, _steps_tables), (ADAPTER_SECTION, _adapter_tables)):
        if args.only and title != {'steps': SECTION, 'adapters': ADAPTER_SECTION}[args.only]:
            continue
        load_start = os.getloadavg()[0]
        lines = [f'Machine: {machine(args.device)}. Date: {time.strftime("%Y-%m-%d")}.', '',
                 f'Command: `{command}`: {setting}. {rounds}', '']
        lines += table(args, common, default)
        lines += ['', f'1-minute load average of the machine: {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} '
                  'at the end (other processes share the cores; the ratios come from interleaved steps).']
        section = '\n'.join([title, ''] + lines) + '\n'
        print(section)
        if not args.quick:
            write_section(section)


def _steps_tables(args: argparse.Namespace, common: dict, default: dict) -> list:
    lines = ['Every row has these settings unless a lever row says otherwise. Peak memory: each mode alone in '
             'its own process, above the footprint after imports.', '']
    lines += main_table(args.archs, common, default, args.rounds)
    if not args.quick:
        lines += ['', f'Levers ({args.archs[-1]}; each row is one interleaved run):', '']
        lines += lever_table(args.archs[-1], common, default, args.rounds)
    return lines


def _adapter_tables(args: argparse.Namespace, common: dict, default: dict) -> list:
    target, teachers = args.adapters
    lines = [f'A {target} target amalgamated with {teachers} teachers gets an adapter per stage where channels or '
             'reductions differ (1x1 conv + BatchNorm, then a resize; `sentizoo.adapters`). Their cost is isolated '
             'against the same step with each adapter replaced by a free stand-in (a view of the target\'s tap '
             'expanded to the teacher\'s channels: no parameters, no arithmetic, the gradient still flows into the '
             'target), two ways: the adapters\' own work timed alone on the taps of the same batch (forward, the '
             'feature MSE, backward into the taps, SGD update of their parameters; on one torch thread, as in the '
             'step, where they run in the target\'s worker thread), and the two whole steps. The '
             f'paper\'s step of {teachers} is there for context only: its ratio also holds the two targets\' '
             'difference.', '']
    return lines + adapter_table(target, teachers, common, default, args.rounds)


if __name__ == '__main__':
    main()
