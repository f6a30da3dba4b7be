"""Training and evaluation engine.

config (the run's options), builders (data, network, optimiser and schedule from a config),
trainer (the loop and the step), hooks (schedule, progress, evaluation, checkpoints), resume,
checkpoint (format, safe loading), fileio (atomic writes), evaluator, distributed, reporting.
"""
from .builders import build_data, build_network, build_optimizer_and_schedule, build_train_loader
from .checkpoint import BEST_NAME, LAST_NAME, CheckpointError, atomic_save, load_checkpoint
from .config import Config, ConfigError, build_parser, config_from_dict, load_config
from .evaluator import evaluate, extract_features, format_results, mean_over_splits
from .hooks import HookBase
from .trainer import NonFiniteLossError, Trainer, train

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "CheckpointError",
    "atomic_save",
    "load_checkpoint",
    "Config",
    "ConfigError",
    "build_parser",
    "config_from_dict",
    "load_config",
    "build_data",
    "build_network",
    "build_optimizer_and_schedule",
    "build_train_loader",
    "evaluate",
    "extract_features",
    "format_results",
    "mean_over_splits",
    "HookBase",
    "NonFiniteLossError",
    "Trainer",
    "train",
]
