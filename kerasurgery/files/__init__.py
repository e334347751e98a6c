"""Model files without Keras: read, check and rewrite `.keras` and `.h5` files.

Nothing here imports keras, tensorflow, jax or torch (tests/test_packaging.py
checks in a fresh process), so `inspect`, `verify`, `--help` and the TF-free
`freeze` / `strip` start in a fraction of a second:

- `formats`: format detection and the container checks (sizes, members, JSON);
- `order`: where Keras looks for a layer's weights (the order it rebuilds a
  model's layers in, group names, `.h5` variable order), from the config alone;
- `layout`: each layer's weights, mapped as Keras maps them, and the pin record;
- `pin_record`: the `kerasurgery.pins.h5` member (encode, read);
- `zipwindow`, `zipwrite`: zip members read in place and written in one pass;
- `atomic`: atomic writes (temporary file, fsync, `os.replace`);
- `offline`: the TF-free `freeze` / `strip` of a `.keras` file;
- `inspection`: `inspect` and `verify`.
"""
