"""Sizing hostile inputs before anything is allocated, without Keras.

- `limits`: every limit on what a file may make kerasurgery read or allocate;
- `declared`: the weights a model config declares, counted from the config;
- `shapes`: the weight shapes Keras builds from a layer's config.

The file readers (`kerasurgery.files`) check through these before they read.
For configs these cannot size, `kerasurgery.model.budget` counts by building
the model with its variables deferred: that needs Keras, so it lives with the
code that loads models, above the Keras-free parts.
"""
