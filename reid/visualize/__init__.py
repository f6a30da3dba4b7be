"""Figures of trained networks: ``python -m reid.visualize <subcommand>`` (see ``__main__``)."""
