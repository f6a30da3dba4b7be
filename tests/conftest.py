"""Session-wide test set-up.

Without a GPU the Triton kernels run in interpreter mode, which must be chosen before triton is
first imported; setting it here, before any test module loads, makes the choice for the session.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.manual_seed(0)
