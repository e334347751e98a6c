"""Whole models: walking layers at any depth, `freeze` / `strip`, and saving.

- `surgery`: `freeze`, `strip`, the layer walk and layer paths;
- `subclassed`: subclassed models, re-created from their config and pinned in place;
- `saving`: `load_model` / `save_model` with the pin record.
"""
