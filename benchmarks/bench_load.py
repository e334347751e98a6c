"""`kerasurgery.load_model` vs `keras.saving.load_model` of the same file (issue 12).

`load_model` checks the container, and, before Keras builds the model for
real, builds it once with every variable deferred (`_budget`) to count the
weights a config would make Keras allocate. This measures what that costs on
real architectures, in one process, interleaved (A B A B ...), medians of
`--rounds` with min and max, and the ratio per round; the counting build alone
is timed too.

    python benchmarks/bench_load.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402

_common.quiet_tensorflow()


def _models():
    import keras
    import keras_hub

    yield "MobileNetV2 (3.5M)", lambda: keras.applications.MobileNetV2(weights=None)
    yield "ResNet50 (25.6M)", lambda: keras.applications.ResNet50(weights=None)
    yield "KerasHub BERT, 4 layers (11.2M)", lambda: keras_hub.models.BertBackbone(
        vocabulary_size=30522, num_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import keras

    import kerasurgery as ks
    from kerasurgery.model import budget as _budget
    from kerasurgery.files import formats

    info = _common.machine()
    _common.print_machine(info)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, build in _models():
            path = Path(folder) / "model.keras"
            build().save(path)
            config = json.loads(zipfile.ZipFile(path).read("config.json"))
            wall, cpu = _common.interleaved({
                "keras.saving.load_model": lambda: keras.saving.load_model(path),
                "kerasurgery.load_model": lambda: ks.load_model(path),
                "counting build": lambda: _budget.built_weight_entries(
                    config, formats.KERAS, safe_mode=True),
            }, args.rounds)
            row = {
                "model": name,
                "keras": _common.summary(wall["keras.saving.load_model"]),
                "ours": _common.summary(wall["kerasurgery.load_model"]),
                "counting": _common.summary(wall["counting build"]),
                "ratio": _common.paired_ratio(wall["kerasurgery.load_model"],
                                              wall["keras.saving.load_model"]),
            }
            rows.append(row)
            print(f"{name}: keras {_common.fmt_s(row['keras']['median'])}, "
                  f"kerasurgery {_common.fmt_s(row['ours']['median'])} "
                  f"(counting build {_common.fmt_s(row['counting']['median'])}), "
                  f"ratio {row['ratio']['median']:.2f} [{row['ratio']['min']:.2f}, {row['ratio']['max']:.2f}]")
    info["load_after"] = _common.load()
    print(f"load average after: {info['load_after']}")
    _common.write_json(args.json, {"machine": info, "versions": _common.versions(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
