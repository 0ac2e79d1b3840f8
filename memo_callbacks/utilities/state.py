"""Run a model inside a callback without changing the training run it observes."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def preserved_state(module: nn.Module, rng: bool = True) -> Iterator[None]:
    """Restore, on exit, the ``training`` flag of every submodule, the grad mode, and (with ``rng``) the global
    torch (CPU and CUDA), numpy and python RNG states, so a callback that runs the model leaves no trace.

    Grad mode is restored, not set: inside, use ``torch.enable_grad()`` or ``torch.inference_mode(False)`` as needed.
    """
    modes = [(m, m.training) for m in module.modules()]
    grad = torch.is_grad_enabled()
    states = None
    if rng:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        states = (torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        torch.set_grad_enabled(grad)
        if states is not None:
            cpu, cuda, np_state, py_state = states
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            np.random.set_state(np_state)
            random.setstate(py_state)
