"""Lightning callbacks that measure memorization in deep networks (Arpit et al., ICML 2017)."""

from memo_callbacks.loss_sensitivity import LossSensitivity

__all__: list[str] = ["LossSensitivity"]
