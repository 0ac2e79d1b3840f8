"""The maths of the callbacks as plain functions on tensors and modules, usable without a Trainer."""

from memo_callbacks.functional.dynamics import (
    clean_noisy_means,
    dynamics_compute,
    dynamics_update,
    example_outcomes,
    first_learned_epoch,
    learned_for_good_epoch,
)
from memo_callbacks.functional.ensemble import (
    EnsembleRun,
    MLPParams,
    binomial_reference,
    init_mlp_params,
    member_orders,
    misclassification_rate,
    mlp_forward,
    train_ensemble,
)

from memo_callbacks.functional.lass import LassResult, lass, lass_noise, pixels_to_input_units

__all__: list[str] = [
    "binomial_reference",
    "clean_noisy_means",
    "dynamics_compute",
    "dynamics_update",
    "EnsembleRun",
    "example_outcomes",
    "first_learned_epoch",
    "init_mlp_params",
    "lass",
    "lass_noise",
    "LassResult",
    "learned_for_good_epoch",
    "member_orders",
    "misclassification_rate",
    "mlp_forward",
    "MLPParams",
    "pixels_to_input_units",
    "train_ensemble",
]
