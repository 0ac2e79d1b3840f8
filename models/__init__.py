"""The paper's MLP and CNN, as plain networks and as LightningModules with its regularisers."""

from models.networks import MLP, Crop, GaussianNoise, PaperCNN, glorot_uniform_

__all__ = ["Crop", "GaussianNoise", "MLP", "PaperCNN", "glorot_uniform_"]
