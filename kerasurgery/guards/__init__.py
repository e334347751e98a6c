"""Sizing hostile inputs before anything is allocated.

- `shapes` (Keras-free): the weight shapes Keras builds from a layer's config;
- `budget` (imports Keras): the counting build, which builds a model without
  allocating its variables, for configs that `shapes` cannot size.
"""
