"""LightningDataModules that make the noisy datasets of Arpit et al. (2017): random labels, random inputs, any fraction."""

from datamodules.base import NoisyDataModule
from datamodules.digits import NoisyDigits
from datamodules.image_folder import NoisyImageFolder
from datamodules.loader import IndexSampler, NoisyBatch, TensorBatchLoader
from datamodules.noise import Corruption
from datamodules.torchvision_sets import NoisyCIFAR10, NoisyMNIST

__all__ = [
    "Corruption",
    "IndexSampler",
    "NoisyBatch",
    "NoisyCIFAR10",
    "NoisyDataModule",
    "NoisyDigits",
    "NoisyImageFolder",
    "NoisyMNIST",
    "TensorBatchLoader",
]
