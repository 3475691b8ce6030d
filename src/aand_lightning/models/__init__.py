"""Pure PyTorch models: no Lightning, no Hydra."""
