"""``python -m reid.visualize <subcommand> [options]``: figures of a trained network.

Each subcommand lives in its own module with a ``main(argv, prog) -> int``; it is imported only
when chosen, so one figure's dependencies never slow down another. Adding a figure is one line
in ``SUBCOMMANDS``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

# name -> (module providing main(argv, prog), one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "apm": ("reid.visualize.apm", "APM at work: similarity maps at several scales s (paper Fig. 3) and the "
                                  "feature maps before and after registration (Fig. 7)"),
    "ranks": ("reid.visualize.ranks", "ranked gallery tracklets of some queries (green match, red wrong, grey junk)"),
}


def usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: python -m reid.visualize <subcommand> [options]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines += ["", "python -m reid.visualize <subcommand> --help shows a subcommand's options."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}; choose one of: {', '.join(SUBCOMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return module.main(rest, prog=f"python -m reid.visualize {name}")


if __name__ == "__main__":
    sys.exit(main())
