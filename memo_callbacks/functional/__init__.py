"""The maths of the callbacks as plain functions on tensors and modules, usable without a Trainer."""

from memo_callbacks.functional.gini import gini
from memo_callbacks.functional.sensitivity import input_gradient_sensitivity, per_example_norm
from memo_callbacks.functional.unrolled import (
    SGDRule,
    SGDWindowRecorder,
    UnrolledSensitivity,
    UnrolledWindow,
    unrolled_sensitivity,
)

__all__ = [
    "SGDRule",
    "SGDWindowRecorder",
    "UnrolledSensitivity",
    "UnrolledWindow",
    "gini",
    "input_gradient_sensitivity",
    "per_example_norm",
    "unrolled_sensitivity",
]
