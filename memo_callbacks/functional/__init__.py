"""The maths of the callbacks as plain functions on tensors and modules, usable without a Trainer."""

__all__: list[str] = []
