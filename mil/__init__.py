"""Model side of the pipeline: manifests, bag datasets, attention-MIL models and training."""
