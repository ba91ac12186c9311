"""tfnas-ray: training-free neural architecture search for RNNs and transformers, on Ray."""

__version__ = "0.1.0"
