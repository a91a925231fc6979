"""Reference scripts that produce sentizoo's checkpoints (like torchvision's ``references/``).

Run from a checkout, e.g. ``python -m training.pretrain --model hp --arch resnet50 --data-root ...``.
The library (``sentizoo``) never imports this package.

* :mod:`training.pretext`: the six pretext tasks (colorization, super-resolution, scene recognition,
  jigsaw puzzles, ANP classification, affective captioning), one module each;
* :mod:`training.perception`: the ST / HO / HP perception models, a backbone with two pretext tasks;
* :mod:`training.datasets`: readers of the pre-training and downstream datasets, and a synthetic world;
* :mod:`training.pretrain`, :mod:`training.export`: pre-training runs and their export to the zoo.
"""
