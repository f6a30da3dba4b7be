"""Pictures of what a trained network does: ``python -m reid.visualize <subcommand> ...``."""
