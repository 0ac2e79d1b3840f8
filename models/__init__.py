"""LightningModules for the paper's MLP and CNN, with its regularisers."""

__all__: list[str] = []
