"""gpex_gpytorch: explain trained PyTorch networks with Gaussian processes (GPEX) in GPyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
