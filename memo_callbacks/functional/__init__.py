"""The maths of the callbacks as plain functions on tensors and modules, usable without a Trainer."""

from memo_callbacks.functional.lass import LassResult, lass, lass_noise, pixels_to_input_units

__all__: list[str] = ["LassResult", "lass", "lass_noise", "pixels_to_input_units"]
