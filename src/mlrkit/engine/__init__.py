"""Training engine: run data preparation, loaders, checkpoints and the Trainer."""
