"""vibe_kernels: normalization kernels for PyTorch (CuTeDSL, Triton and PyTorch backends)."""

__version__ = "0.1.0"
