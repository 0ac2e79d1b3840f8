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
from memo_callbacks.functional.gini import gini
from memo_callbacks.functional.lass import LASSConfig, LassResult, lass, lass_noise, pixels_to_input_units
from memo_callbacks.functional.memorization import (
    ConsistencyScores,
    MemorizationScores,
    consistency_scores,
    memorization_from_runs,
    memorization_scores,
    random_subsets,
)
from memo_callbacks.functional.sensitivity import input_gradient_sensitivity, per_example_norm
from memo_callbacks.functional.unrolled import (
    SGDRule,
    SGDTrajectoryRecorder,
    SGDWindowRecorder,
    UnrolledSensitivity,
    UnrolledWindow,
    unrolled_sensitivity,
)

__all__ = [
    "ConsistencyScores",
    "EnsembleRun",
    "LASSConfig",
    "LassResult",
    "MLPParams",
    "MemorizationScores",
    "SGDRule",
    "SGDTrajectoryRecorder",
    "SGDWindowRecorder",
    "UnrolledSensitivity",
    "UnrolledWindow",
    "binomial_reference",
    "clean_noisy_means",
    "consistency_scores",
    "dynamics_compute",
    "dynamics_update",
    "example_outcomes",
    "first_learned_epoch",
    "gini",
    "init_mlp_params",
    "input_gradient_sensitivity",
    "lass",
    "lass_noise",
    "learned_for_good_epoch",
    "member_orders",
    "memorization_from_runs",
    "memorization_scores",
    "misclassification_rate",
    "mlp_forward",
    "per_example_norm",
    "pixels_to_input_units",
    "random_subsets",
    "train_ensemble",
    "unrolled_sensitivity",
]
