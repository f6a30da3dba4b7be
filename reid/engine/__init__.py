"""Training and evaluation engine: config, distributed helpers, checkpoints, trainer, evaluator."""
from .checkpoint import BEST_NAME, LAST_NAME, CheckpointError, atomic_save, load_checkpoint
from .config import Config, ConfigError, build_parser, config_from_dict, load_config
from .evaluator import evaluate, extract_features, format_results, mean_over_splits
from .trainer import NonFiniteLossError, train

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
    "evaluate",
    "extract_features",
    "format_results",
    "mean_over_splits",
    "NonFiniteLossError",
    "train",
]
