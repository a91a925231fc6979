"""The software a training run ran on, as its result files and checkpoints record it."""
from __future__ import annotations

import platform
from typing import Dict

__all__ = ['versions']


def versions() -> Dict[str, str]:
    """``{'python', 'torch', 'torchvision', 'timm', 'sentizoo'}`` -> version, as plain strings (torch's is a
    ``TorchVersion``, which a checkpoint read with ``weights_only=True`` refuses)."""
    import timm
    import torch
    import torchvision

    import sentizoo
    return {'python': platform.python_version(), 'torch': str(torch.__version__),
            'torchvision': str(torchvision.__version__), 'timm': str(timm.__version__), 'sentizoo': str(sentizoo.__version__)}
