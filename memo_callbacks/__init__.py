"""Lightning callbacks that measure memorization in deep networks (Arpit et al., ICML 2017)."""

from memo_callbacks.critical_sample_ratio import CriticalSampleRatio, log_spaced_epochs
from memo_callbacks.example_dynamics import DynamicsHistory, ExampleDynamics
from memo_callbacks.functional.lass import LASSConfig
from memo_callbacks.loss_sensitivity import LossSensitivity
from memo_callbacks.memorization_signals import MemorizationSignals
from memo_callbacks.utilities.with_index import WithIndex

__all__: list[str] = [
    "CriticalSampleRatio", "DynamicsHistory", "ExampleDynamics", "LASSConfig", "LossSensitivity", "MemorizationSignals", "WithIndex",
    "log_spaced_epochs",
]
