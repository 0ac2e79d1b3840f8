"""The paper's MLP and CNN, as plain networks and as LightningModules with its regularisers."""

from models.classifier import CNNClassifier, MemorizationClassifier, MLPClassifier, WeightedMean, step_seed
from models.networks import MLP, Crop, GaussianNoise, PaperCNN, glorot_uniform_

__all__ = [
    "CNNClassifier",
    "Crop",
    "GaussianNoise",
    "MLP",
    "MLPClassifier",
    "MemorizationClassifier",
    "PaperCNN",
    "WeightedMean",
    "glorot_uniform_",
    "step_seed",
]
