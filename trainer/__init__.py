"""Seizure-detection training on an eegcache cache: SQL-drawn balanced epochs (``sampling``), windows read from the
stored arrays (``data``), a SeizureTransformer-style model (``model``), the training loop (``fit``), post-processing
and SzCORE scoring (``postprocess``, ``metrics``, ``predict``, ``evaluate``) and the ``trainer`` command line (``cli``).

Only ``sampling`` is importable without torch.
"""
