"""Side-by-side benchmark of eegcache against the caches users build today (``python -m bench``).

Every contender gets the same corpus, the same preprocessing (``eegcache.pipeline.preprocess`` with the default
``PreprocessSpec``, read through ``eegcache.sources.edf.read_recording``), the same labels and the same windows, so each
figure is a ratio measured in one run on one machine.
"""
