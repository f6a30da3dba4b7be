"""Dataset registry: name -> loader. Every loader returns a VideoDataset."""
from __future__ import annotations

import inspect

from .base import DatasetLayoutError, EmptySplitError, VideoDataset
from .duke import DUKE_LAYOUT, load_duke
from .folder import FOLDER_LAYOUT, load_folder
from .ilidsvid import ILIDSVID_LAYOUT, load_ilidsvid
from .mars import MARS_LAYOUT, MARS_PROTOCOLS, load_mars
from .prid import PRID_LAYOUT, load_prid
from .synthetic import load_synthetic

__all__ = ["DATASETS", "ALIASES", "LAYOUTS", "build_dataset", "VideoDataset", "DatasetLayoutError", "EmptySplitError"]

DATASETS = {
    "synthetic": load_synthetic,
    "mars": load_mars,
    "duke": load_duke,
    "ilidsvid": load_ilidsvid,
    "prid": load_prid,
    "folder": load_folder,
}
ALIASES = {"dukemtmcvidreid": "duke", "duke-video": "duke", "dukemtmc-videoreid": "duke", "ilids-vid": "ilidsvid",
           "ilids": "ilidsvid", "prid2011": "prid", "prid_2011": "prid"}
LAYOUTS = {"mars": MARS_LAYOUT, "duke": DUKE_LAYOUT, "ilidsvid": ILIDSVID_LAYOUT, "prid": PRID_LAYOUT,
           "folder": FOLDER_LAYOUT}


def _accepted(fn) -> set[str]:
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD} - {"root", "split_id"}


def build_dataset(name: str = "synthetic", root=None, split_id: int = 0, verbose: bool = True, **options) -> VideoDataset:
    """Load dataset `name` (see DATASETS) from `root`; prints the summary table when verbose."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, one of {sorted(DATASETS)}, got {type(name).__name__}")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    fn = DATASETS[key]
    if key == "synthetic":
        options["verbose"] = verbose
        from ..synthetic import SyntheticConfig
        import dataclasses
        accepted = _accepted(fn) | {f.name for f in dataclasses.fields(SyntheticConfig)}
    else:
        accepted = _accepted(fn)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for dataset {key!r}; accepted: {sorted(accepted)}")
    ds = fn(root, split_id=split_id, **options)
    if verbose:
        print(ds.summary())
    return ds
