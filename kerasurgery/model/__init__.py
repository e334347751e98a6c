"""Whole models: walking layers at any depth, `freeze` / `strip`, and saving.

- `walk`: the one walk of a live model's layers, and how it names them;
- `surgery`: `freeze`, `strip`;
- `subclassed`: subclassed models, re-created from their config and pinned in place;
- `saving`: `load_model` / `save_model` with the pin record;
- `load_checks`: why a file does not load, decided by checks rather than Keras' messages;
- `budget`: the counting build: a model built with its variables deferred, to size
  hostile configs that `kerasurgery.guards` cannot size from the config alone.
"""
