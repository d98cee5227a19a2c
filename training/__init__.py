"""Training stage: Hydra run configs and the multitask trainer (arrives with the training issue)."""
