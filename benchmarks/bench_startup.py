"""Process time of `kerasurgery inspect` and `--help` vs `python -c "import tensorflow"`.

Neither command needs TensorFlow, so each should cost a small fraction of
importing it. All are whole processes, interleaved round by round:

    baseline        python -c "import tensorflow"
    help            python -m kerasurgery --help
    inspect         python -m kerasurgery inspect SMALL   (the pruned MLP of width 1024, frozen: 3.1M)
    inspect_large   python -m kerasurgery inspect --json LARGE   (width 4096, frozen: 50.3M)

It also checks, in one more process each, that neither command imports TensorFlow.

    python benchmarks/bench_startup.py [--rounds 7] [--large-width 4096 | --large-width 0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _models  # noqa: E402

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
_CHECK = (
    "import sys; from kerasurgery.cli import main; "
    "main(sys.argv[1:]); print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)"
)


def imports_tensorflow(args: list[str]) -> bool:
    result = subprocess.run([sys.executable, "-c", _CHECK, *args], cwd=_common.ROOT,
                            env={**os.environ, **ENV}, capture_output=True, text=True)
    return "tensorflow imported: True" in result.stderr


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--large-width", type=int, default=4096, help="0 skips the large file")
    parser.add_argument("--workdir")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    result: dict = {"benchmark": "startup", "rounds": args.rounds}
    if not (_common.ROOT / "kerasurgery" / "cli").is_dir():
        result["skipped"] = "the kerasurgery command line is not there yet"
        print("startup: skipped,", result["skipped"])
        _common.write_json(args.json, result)
        return result
    folder = _models.workdir(args.workdir)
    small = _models.frozen_mlp(1024, folder)
    py = sys.executable
    runs = {
        "baseline": [py, "-c", "import tensorflow"],
        "help": [py, "-m", "kerasurgery", "--help"],
        "inspect": [py, "-m", "kerasurgery", "inspect", str(small)],
    }
    files = {"inspect": small}
    if args.large_width:
        large = _models.frozen_mlp(args.large_width, folder)
        runs["inspect_large"] = [py, "-m", "kerasurgery", "inspect", "--json", str(large)]
        files["inspect_large"] = large
    for argv_ in runs.values():  # warm the page cache, and check each works
        _common.run_process(argv_, env=ENV)
    wall, _ = _common.interleaved({n: (lambda a=a: _common.run_process(a, env=ENV)) for n, a in runs.items()},
                                  args.rounds)
    result.update({
        "machine": _common.machine(),
        "files": {name: {"path": str(path), "bytes": path.stat().st_size} for name, path in files.items()},
        "s": {name: _common.summary(ts) for name, ts in wall.items()},
        "ratio": {name: _common.paired_ratio(wall[name], wall["baseline"]) for name in wall if name != "baseline"},
        "imports_tensorflow": {
            "help": imports_tensorflow(["--help"]),
            "inspect": imports_tensorflow(["inspect", str(small)]),
        },
    })
    print(f"startup: whole processes, {args.rounds} interleaved rounds")
    _common.print_machine(result["machine"])
    print(f"  {'run':<14} {'median s':>9} {'min':>7} {'max':>7}   ratio to `import tensorflow`: median of paired [min, max]")
    for name, s in result["s"].items():
        line = f"  {name:<14} {s['median']:9.3f} {s['min']:7.3f} {s['max']:7.3f}"
        r = result["ratio"].get(name)
        line += f"   {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]" if r else "   1 (baseline)"
        print(line)
    for name, f in result["files"].items():
        print(f"  {name}: {f['path']} ({f['bytes'] / 1e6:.0f} MB)")
    print(f"  imports TensorFlow: {result['imports_tensorflow']}")
    _common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
