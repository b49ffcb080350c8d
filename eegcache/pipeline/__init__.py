"""What a recording becomes: the preprocessing spec and its named pipelines, montages, filters, per-sample labels,
windows, and the content keys that make the same input and spec one stored object."""
