"""Lightning callbacks that measure memorization in deep networks (Arpit et al., ICML 2017)."""

__all__: list[str] = []
