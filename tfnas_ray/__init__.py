"""tfnas-ray: training-free neural architecture search for RNNs and transformers, on Ray."""

__version__ = "0.1.0"

__all__ = ["score", "score_model"]


def __getattr__(name: str):
    # The API pulls in torch and the metrics: imported on first use, so that
    # `import tfnas_ray` stays light for the CLI and the Ray workers.
    if name in ("score", "score_model"):
        from tfnas_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'tfnas_ray' has no attribute {name!r}")
