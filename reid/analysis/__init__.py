"""Analyses of trained networks: APM registration accuracy against the synthetic set's ground truth.

``correspondence`` (ground-truth mapping between frames, numpy), ``apm_probe`` (APM inputs by
forward hooks, the registration weights P), ``registration`` (the metric, its driver and CLI:
``python -m reid.analysis.registration``).
"""
