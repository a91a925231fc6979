"""benchmarks/gpu.py runs end to end before any GPU is at hand: --smoke on the CPU, tiny sizes."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu.py'


def test_gpu_benchmark_smoke_on_cpu():
    before = (ROOT / 'BENCHMARKS.md').read_bytes()
    result = subprocess.run([sys.executable, str(SCRIPT), '--smoke'], capture_output=True, text=True,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=''), timeout=900)
    assert result.returncode == 0, result.stderr
    section = result.stdout[result.stdout.index('## GPU'):]
    rows = dict(re.findall(r'^\| (.+?) \| (.+?) \|$', section, re.M)[1:])  # without the header row
    names = ' '.join(rows)
    for what in ('plain fine-tuning step', 'amalgamation step (exact) vs plain', 'frozen-teacher step vs plain',
                 'model only', '`sentizoo predict`', 'ST pretext', 'HO pretext', 'HP pretext', 'Places loader'):
        assert what in names, (what, section)
    numbers = [float(n) for value in rows.values() for n in re.findall(r'(\d+(?:\.\d+)?)(?:x| images/s| s\b)', value)]
    assert len(numbers) >= len(rows) and all(n > 0 for n in numbers)
    assert '`python benchmarks/gpu.py --smoke`' in section
    assert (ROOT / 'BENCHMARKS.md').read_bytes() == before  # the smoke run writes nothing
    assert not (ROOT / 'benchmarks' / 'gpu.json').exists()
    figures = json.loads(result.stdout.strip().splitlines()[-1])  # what training.release.estimate reads
    assert figures['plain_images_per_second'] > 0 and figures['amalgamation_vs_plain'] > 0
    assert set(figures['pretext_vs_plain']) == {'st', 'ho', 'hp'} and figures['arch'] == 'resnet18'


def test_gpu_benchmark_without_a_gpu_says_so():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=''), timeout=300)
    assert result.returncode == 2 and 'no CUDA device' in result.stderr and '--smoke' in result.stderr
