"""satune: sweeps for adversarial-training research. `satune.load(...)` reads a finished sweep (satune.api)."""


def __getattr__(name: str):
    if name == "load":  # imported on first use: `import satune` stays free of MLflow and pandas
        from satune.api import load

        return load
    raise AttributeError(f"module 'satune' has no attribute {name!r}")
