"""``python -m reid.models [--markdown] [--backbone resnet50|resnet18|resnet34|all]``."""
import sys

from .summary import main

if __name__ == "__main__":
    sys.exit(main())
