"""``python -m reid.visualize <subcommand> [options]``: each subcommand is a module with ``main(argv)``."""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line description); modules are imported only when chosen
SUBCOMMANDS = {
    "ranks": ("reid.visualize.ranks", "ranked gallery tracklets of some queries (green match, red wrong, grey junk)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = ["usage: python -m reid.visualize <subcommand> [options]   (<subcommand> --help for its options)", ""]
        lines += [f"  {name:<8} {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown subcommand {argv[0]!r}; expected one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0
    return importlib.import_module(SUBCOMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
