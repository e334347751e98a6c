"""The command line: `kerasurgery freeze | inspect | strip | verify`.

A thin layer over the library: `main` parses arguments (`arguments`), asks the
library, and renders what it returns (`render`); `spec` reads rule names,
mask files and TOML spec files. Only this package prints or exits.
"""

from kerasurgery.cli.commands import main

__all__ = ["main"]
