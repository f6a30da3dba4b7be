"""Run configuration: one flat dataclass, filled from defaults, then a YAML file, then flags.

Precedence: dataclass defaults < ``--config file.yaml`` < command-line flags. Every field is
both a YAML key and a flag (``num_instances`` <-> ``--num-instances``). YAML files may group
keys under section headings (``data:``, ``model:``, ...) for readability; sections are
flattened, and an unknown key is an error that names the file and suggests the closest key.
The full resolved config is stored in every checkpoint and in ``config.yaml`` of the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import yaml

from .allocator import MALLOC_CHOICES
from .workers import check_num_workers, parse_num_workers
from .precision import AMP_CHOICES, MEMORY_FORMAT_CHOICES

__all__ = ["Config", "ConfigError", "MACHINE_DEFAULTS", "build_parser", "load_config", "config_from_dict", "check_device"]


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key and the file."""


def _f(default, help: str, section: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, "section": section, **kw})
    return field(default=default, metadata={"help": help, "section": section, **kw})


@dataclass
class Config:
    # --- data ---------------------------------------------------------------------------------
    dataset: str = _f("synthetic", "dataset name: synthetic, mars, duke, ilidsvid, prid, folder", "data")
    root: Optional[str] = _f(None, "dataset root directory (synthetic: cache directory)", "data")
    split_id: Any = _f(0, "iLIDS-VID/PRID split index, or 'all' to train and test every split", "data")
    mars_protocol: str = _f("release", "MARS gallery protocol: release (queries in gallery) or skip_unmatched", "data")
    dataset_options: dict = _f({}, "extra dataset options, e.g. --dataset-option num_train_ids=16", "data")
    seq_len: int = _f(4, "frames per training clip", "data")
    stride: int = _f(8, "temporal stride between sampled training frames", "data")
    height: int = _f(128, "frame height in pixels", "data")
    width: int = _f(64, "frame width in pixels", "data")
    num_identities: int = _f(8, "P: identities per batch (whole batch, all ranks together)", "data")
    num_instances: int = _f(4, "K: clips per identity in a batch", "data")
    random_erasing: bool = _f(False, "random erasing augmentation (not in the release)", "data")
    num_workers: Any = _f("auto", "data loader worker processes per rank: auto (none on a CPU run of <= 4 threads, "
                          "where workers would take cores from the step; 2 otherwise) or a number", "data")
    test_clip_len: int = _f(32, "frames per clip at test time (every frame is used)", "data")
    test_batch_size: int = _f(8, "clips per batch at test time (of shorter clips, as many as fit in as many frames)", "data")
    # --- model --------------------------------------------------------------------------------
    arch: str = _f("ap3d_resnet18", "network (reid.models.MODEL_NAMES)", "model")
    pretrained: Optional[str] = _f(None, "ImageNet weights file for the 2D backbone (never downloaded)", "model")
    time_dim: int = _f(3, "temporal kernel N of the temporal blocks and APM's window (odd, >= 3)", "model")
    apm_scale: float = _f(4.0, "APM similarity scale s", "model")
    apm_reduction: int = _f(16, "APM channel reduction: the similarity uses C // apm_reduction channels", "model")
    contrastive: bool = _f(True, "contrastive attention in APM", "model")
    apm_backend: str = _f("auto", "APM implementation: auto, reference, cpu, triton", "model")
    detach_gate_inputs: bool = _f(True, "feed the contrastive gate detached inputs (the release)", "model")
    stages: Optional[list] = _f(None, "ResNet stages holding temporal blocks (default: 2 3)", "model")
    num_blocks: Any = _f(None, "temporal blocks per stage: 'half' (default), 'all', 1 (Table 3)", "model")
    last_stride: int = _f(1, "spatial stride of layer4 (1 in the paper)", "model")
    # --- optimisation -------------------------------------------------------------------------
    optimizer: str = _f("adam", "adam, adamw or sgd", "optim")
    lr: float = _f(3e-4, "base learning rate", "optim")
    weight_decay: float = _f(5e-4, "weight decay", "optim")
    momentum: float = _f(0.9, "SGD momentum", "optim")
    epochs: int = _f(6, "training epochs", "optim")
    milestones: list = _f([4], "epochs at which the learning rate is multiplied by gamma", "optim")
    gamma: float = _f(0.1, "learning-rate decay factor at each milestone", "optim")
    warmup_epochs: int = _f(0, "linear warm-up epochs (0 = none, as in the release)", "optim")
    warmup_factor: float = _f(0.01, "learning-rate multiplier at the start of warm-up", "optim")
    iters_per_epoch: int = _f(0, "cap on training steps per epoch (0 = one pass of the sampler)", "optim")
    # --- loss ---------------------------------------------------------------------------------
    ce_weight: float = _f(1.0, "cross-entropy weight", "loss")
    triplet_weight: float = _f(1.0, "triplet weight", "loss")
    margin: float = _f(0.3, "triplet margin", "loss")
    triplet_distance: str = _f("cosine", "triplet distance: cosine (d = -cos, the release) or euclidean", "loss")
    label_smoothing: float = _f(0.0, "label smoothing epsilon (0 = none, as in the release)", "loss")
    # --- run ----------------------------------------------------------------------------------
    amp: str = _f("auto", "mixed precision: auto (bf16 where the device computes it natively), none, bf16 or fp16 (CUDA)", "run")
    memory_format: str = _f("auto", "activation/weight layout: auto, contiguous or channels_last_3d", "run")
    malloc: str = _f("auto", "host allocator: auto (glibc keeps freed memory for reuse instead of page-faulting it "
                     "back in every step) or system (the C library's defaults)", "run")
    seed: int = _f(0, "random seed", "run")
    device: str = _f("auto", "auto, cpu or cuda", "run")
    output_dir: str = _f("runs/ap3d_synthetic", "directory for checkpoints, logs, TensorBoard and results", "run")
    resume: Optional[str] = _f(None, "checkpoint to resume from, or 'auto' (output_dir/checkpoint_last.pth if present)", "run")
    eval_every: int = _f(0, "evaluate every N epochs and keep the best checkpoint by mAP (0 = only at the end)", "run")
    log_every: int = _f(10, "steps between log-file lines", "run")
    threads: int = _f(0, "torch CPU threads per process (0 = leave torch's default)", "run")
    compile: bool = _f(False, "torch.compile the training network: up to ~1.2x faster steps on CPU, after minutes of "
                       "compilation, so for long runs (README, bench/bench_compile.py); evaluation stays eager", "run")
    # --- evaluation ---------------------------------------------------------------------------
    rerank: bool = _f(False, "also report k-reciprocal re-ranking", "test")
    rerank_k1: int = _f(20, "re-ranking k1", "test")
    rerank_k2: int = _f(6, "re-ranking k2", "test")
    rerank_lambda: float = _f(0.3, "re-ranking lambda", "test")

    def validate(self) -> "Config":
        def bad(key, got, expected):
            raise ConfigError(f"{key}: got {got!r}, expected {expected}")

        for key in ("seq_len", "stride", "height", "width", "num_identities", "num_instances",
                    "test_clip_len", "test_batch_size", "epochs", "log_every", "apm_reduction"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, getattr(self, key), "a positive integer")
        try:
            check_num_workers(self.num_workers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for key in ("warmup_epochs", "iters_per_epoch", "eval_every", "threads"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                bad(key, getattr(self, key), "a non-negative integer")
        if self.num_instances < 2:
            bad("num_instances", self.num_instances, ">= 2 (the triplet loss needs positives)")
        if self.num_identities < 2:
            bad("num_identities", self.num_identities, ">= 2 (the triplet loss needs negatives)")
        if self.lr <= 0:
            bad("lr", self.lr, "> 0")
        if self.weight_decay < 0:
            bad("weight_decay", self.weight_decay, ">= 0")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            bad("optimizer", self.optimizer, "one of adam, adamw, sgd")
        if self.amp not in AMP_CHOICES:
            bad("amp", self.amp, "one of " + ", ".join(AMP_CHOICES))
        if self.memory_format not in MEMORY_FORMAT_CHOICES:
            bad("memory_format", self.memory_format, "one of " + ", ".join(MEMORY_FORMAT_CHOICES))
        if self.malloc not in MALLOC_CHOICES:
            bad("malloc", self.malloc, "one of " + ", ".join(MALLOC_CHOICES))
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", self.device, "one of auto, cpu, cuda")
        check_device(self.device)
        if self.mars_protocol not in ("release", "skip_unmatched"):
            bad("mars_protocol", self.mars_protocol, "release or skip_unmatched")
        if self.triplet_distance not in ("cosine", "euclidean"):
            bad("triplet_distance", self.triplet_distance, "cosine or euclidean")
        if not (isinstance(self.split_id, int) and self.split_id >= 0) and self.split_id != "all":
            bad("split_id", self.split_id, "a non-negative integer or 'all'")
        if not isinstance(self.milestones, list) or not all(isinstance(m, int) and m > 0 for m in self.milestones):
            bad("milestones", self.milestones, "a list of positive integers (epochs)")
        if sorted(self.milestones) != self.milestones:
            bad("milestones", self.milestones, "an increasing list")
        if not 0 < self.gamma <= 1:
            bad("gamma", self.gamma, "in (0, 1]")
        if not 0 < self.warmup_factor <= 1:
            bad("warmup_factor", self.warmup_factor, "in (0, 1]")
        if self.ce_weight < 0 or self.triplet_weight < 0 or self.ce_weight + self.triplet_weight == 0:
            bad("ce_weight/triplet_weight", (self.ce_weight, self.triplet_weight), "non-negative, not both 0")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", self.label_smoothing, "in [0, 1)")
        if self.margin < 0:
            bad("margin", self.margin, ">= 0")
        from ap3d_kernels.validation import check_time_dim

        try:
            check_time_dim(self.time_dim)
        except (TypeError, ValueError):
            bad("time_dim", self.time_dim, "an odd integer >= 3")
        if self.last_stride not in (1, 2):
            bad("last_stride", self.last_stride, "1 or 2")
        if self.stages is not None:
            from reid.models.video_resnet import check_stages

            try:
                check_stages("stages", self.stages)
            except (TypeError, ValueError):
                bad("stages", self.stages, "a list of distinct ResNet stages in 1..4")
        if not isinstance(self.dataset_options, dict):
            bad("dataset_options", self.dataset_options, "a mapping of option name to value")
        if self.pretrained is not None and not os.path.isfile(self.pretrained):
            bad("pretrained", self.pretrained, "an existing weights file (nothing is downloaded)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_device(device: str) -> None:
    """``cuda`` must exist before anything starts (data generation, training)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
            raise ConfigError(f"device: got 'cuda', but no CUDA device is available ({why}); "
                              f"expected cpu or auto on this machine")


_FIELDS = {f.name: f for f in fields(Config)}
_SECTIONS = {f.metadata["section"] for f in fields(Config)}


def _closest(key: str) -> str:
    near = difflib.get_close_matches(key, list(_FIELDS), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def config_from_dict(values: dict, source: str = "config", base: Optional[Config] = None) -> Config:
    """Overlay ``values`` (flat or grouped by section) on ``base`` (default: the defaults)."""
    flat: dict = {}
    for key, value in (values or {}).items():
        if key in _SECTIONS and key not in _FIELDS and isinstance(value, dict):
            for sub, v in value.items():
                if sub not in _FIELDS or _FIELDS[sub].metadata["section"] != key:
                    raise ConfigError(f"{source}: unknown key {key}.{sub}{_closest(sub)}")
                flat[sub] = v
        elif key in _FIELDS:
            flat[key] = value
        else:
            raise ConfigError(f"{source}: unknown key {key!r}{_closest(key)}")
    cfg = dataclasses.replace(base or Config(), **{k: _coerce(k, v, source) for k, v in flat.items()})
    return cfg


def _coerce(key: str, value, source: str):
    """YAML gives ints for floats (``lr: 1``) and strings for 'all'; normalise to field types."""
    default = _FIELDS[key].default if _FIELDS[key].default is not dataclasses.MISSING else None
    if value is None:
        return None
    factory = _FIELDS[key].default_factory
    if factory is not dataclasses.MISSING and isinstance(factory(), dict) and not isinstance(value, dict):
        # checked here, not in validate(): flags are merged into this mapping before validation
        raise ConfigError(f"{source}: {key}: got {value!r}, expected a mapping of option name to value "
                          f"(YAML: '{key}: {{name: value}}')")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "3e-4" (no dot) as a string
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int) and key != "split_id":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
    return value


def _load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file not found: {path}")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_split(text: str):
    return "all" if text == "all" else int(text)


def _parse_num_blocks(text: str):
    return int(text) if text.isdigit() else text


def _parse_option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


# Options chosen for the machine a command runs on: a checkpoint's stored values (the training
# machine's) are replaced by these when it is loaded for testing or inference.
MACHINE_DEFAULTS = {"device": "auto", "malloc": "auto", "num_workers": "auto"}


def build_parser(description: str, extra=None, prog: Optional[str] = None) -> argparse.ArgumentParser:
    """Parser with ``--config`` and one flag per Config field (all defaulting to 'not given')."""
    # allow_abbrev=False: a misspelt flag (--num-instance) is an error, not a silent prefix match
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML config file (flags override its values)")
    if extra is not None:
        extra(parser)
    groups = {}
    for f in fields(Config):
        section = f.metadata["section"]
        group = groups.setdefault(section, parser.add_argument_group(section))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} [default: {default}]"
        kw: dict = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if f.name == "dataset_options":
            group.add_argument("--dataset-option", action="append", type=_parse_option, metavar="KEY=VALUE", **kw)
        elif f.name == "milestones":
            group.add_argument(flag, nargs="*", type=int, metavar="EPOCH", **kw)
        elif f.name == "stages":
            group.add_argument(flag, nargs="+", type=int, metavar="STAGE", **kw)
        elif f.name == "num_blocks":
            group.add_argument(flag, type=_parse_num_blocks, **kw)
        elif f.name == "num_workers":
            group.add_argument(flag, type=parse_num_workers, **kw)
        elif f.name == "split_id":
            group.add_argument(flag, type=_parse_split, **kw)
        elif isinstance(default, bool):
            group.add_argument(flag, type=_parse_bool, nargs="?", const=True, metavar="BOOL", **kw)
        elif isinstance(default, float):
            group.add_argument(flag, type=float, **kw)
        elif isinstance(default, int):
            group.add_argument(flag, type=int, **kw)
        else:
            group.add_argument(flag, type=str, **kw)
    return parser


def load_config(args: argparse.Namespace, base: Optional[Config] = None) -> Config:
    """defaults (or ``base``) < YAML (``args.config``) < flags present in ``args``."""
    cfg = base or Config()
    if getattr(args, "config", None):
        cfg = config_from_dict(_load_yaml(args.config), source=args.config, base=cfg)
    given = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if "dataset_options" in given:
        given["dataset_options"] = {**cfg.dataset_options, **dict(given["dataset_options"])}
    cfg = dataclasses.replace(cfg, **given)
    return cfg.validate()
