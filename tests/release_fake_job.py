"""A stand-in for a release job's command (test_release.py): a resumable count of steps, then one output file.

    python -m release_fake_job --out FILE [--steps N] [--sleep S] [--input FILE] [--fail]

The count is saved after every step in ``FILE.state`` and read back at the start, as a checkpoint is; every start
is appended to ``FILE.trace`` with the step it starts from and its parent's pid (the submitit task).
"""
import argparse
import os
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument('--out', required=True)
p.add_argument('--steps', type=int, default=1)
p.add_argument('--sleep', type=float, default=0.0)
p.add_argument('--input', help='a file whose text goes into the output (a dependency\'s output)')
p.add_argument('--fail', action='store_true')
args = p.parse_args()
out = Path(args.out)
state, trace = out.with_suffix('.state'), out.with_suffix('.trace')
start = int(state.read_text()) if state.exists() else 0
with open(trace, 'a') as f:
    f.write(f'start {start} ppid {os.getppid()}\n')
if args.fail:
    sys.exit('fake job: failing as asked')
for step in range(start, args.steps):
    time.sleep(args.sleep)
    state.write_text(str(step + 1))
out.write_text(f'{args.steps} steps from {start}' + (Path(args.input).read_text() if args.input else ''))
