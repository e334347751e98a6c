"""`kerasurgery freeze` of a `.keras` model vs plain Keras load + save of the same file.

Both are timed as whole processes (Python start, imports, load, work, save),
interleaved round by round (the order rotating), on the same input file; before
each run, outside the timing, its previous output is removed and `os.sync()`
flushes what earlier runs left to write:

    baseline   python -c "keras.models.load_model(IN).save(OUT)"
    cli        python -m kerasurgery freeze IN -o OUT --force   (rule: exact zeros)
    library    python -c "ks.save_model(ks.freeze(ks.load_model(IN), {'*': zeros}), OUT)"  (--library)

For a Keras 3 `.keras` input and output the command line runs without
TensorFlow (`kerasurgery/_offline.py`); the script checks, with `--debug`,
that it did. Each run's peak memory is its maximum resident set size
(`os.wait4`). The floor of any freeze is writing its output: the bytes
the output takes on disk (a fresh optimizer's zero slots are left as holes)
over the disk's write speed, measured here by writing as many bytes with
`fsync` (the command line also flushes its output to disk before
`os.replace`; `keras.Model.save` does not).

Sizes: `--width 4096` is the pruned MLP of `_models.py` (50.3M parameters,
half of each kernel exactly 0, compiled with Adam, never trained: both
Keras and the command line write a fresh Adam state of two slots per
weight). `--big-width 12928` adds the same MLP at 501M parameters, saved
without a training config (a compiled one would make Keras hold 6 GB of
optimizer state on top of the 2 GB model); `--big-width 0` skips it.

    python benchmarks/bench_freeze.py [--width 4096] [--big-width 12928] [--rounds 5] [--json FILE]

The JSON holds one entry per size under "sizes", the first also at the top level.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _models  # noqa: E402

BASELINE = "import sys, keras; keras.models.load_model(sys.argv[1]).save(sys.argv[2])"
LIBRARY = (
    "import sys, kerasurgery as ks; "
    "ks.save_model(ks.freeze(ks.load_model(sys.argv[1]), {'*': ks.rules.zeros()}), sys.argv[2], overwrite=True)"
)
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}

# The big model: as _models.pruned_mlp, without compile (see the docstring).
_MAKE_BIG = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

width, path = int(sys.argv[1]), sys.argv[2]
keras.utils.set_random_seed(0)
inputs = keras.Input((width // 2,), name="x")
h = inputs
units = [width, width, width, width // 2]
for k, n in enumerate(units):
    h = keras.layers.Dense(n, activation="relu" if k < len(units) - 1 else None, name=f"dense_{k}",
                           kernel_initializer="zeros")(h)
model = keras.Model(inputs, h, name=f"mlp_{width}")
rng = np.random.default_rng(0)
for layer in model.layers[1:]:
    kernel = layer.kernel
    rows = kernel.shape[0]
    step = max(1, (64 << 20) // (4 * kernel.shape[1]))
    for start in range(0, rows, step):  # a block of rows at a time: never a second copy of the model
        block = rng.standard_normal((min(step, rows - start), kernel.shape[1]), dtype=np.float32) * 0.01
        block[rng.random(block.shape) < 0.5] = 0.0
        block[block == 0] = 0.0  # products that underflowed to -0.0 too: every zero is +0.0, one pin value
        kernel[start:start + block.shape[0]].assign(block)
tmp = path + ".tmp.keras"
model.save(tmp)
os.replace(tmp, path)
"""


def big_mlp(width: int, folder: Path) -> Path:
    path = folder / f"pruned_mlp_{width}_nocompile_v2.keras"
    if not path.exists():
        made = subprocess.run([sys.executable, "-c", _MAKE_BIG, str(width), str(path)],
                              env={**os.environ, **ENV}, capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"making {path} failed:\n{made.stderr[-4000:]}")
    return path


def run(argv: list[str]) -> tuple[float, int]:
    """Runs a whole process; returns its wall seconds and its peak resident memory in bytes."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=_common.ROOT, env={**os.environ, **ENV},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}:\n{stderr[-4000:].decode()}")
    return elapsed, usage.ru_maxrss * 1024


def disk_write_speed(folder: Path, size: int) -> float:
    """Bytes per second of writing `size` bytes to a new file in `folder`, `fsync` included."""
    block = os.urandom(16 << 20)
    path = folder / "write-speed.tmp"
    start = time.perf_counter()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            written += f.write(block[: min(len(block), size - written)])
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return size / elapsed


def measure(source: Path, folder: Path, rounds: int, library: bool) -> dict:
    outputs = {"baseline": folder / "plain.keras", "cli": folder / "frozen_cli.keras",
               "library": folder / "frozen_lib.keras"}
    runs = {
        "baseline": [sys.executable, "-c", BASELINE, str(source), str(outputs["baseline"])],
        "cli": [sys.executable, "-m", "kerasurgery", "freeze", str(source), "-o", str(outputs["cli"]), "--force"],
    }
    if library:
        runs["library"] = [sys.executable, "-c", LIBRARY, str(source), str(outputs["library"])]
    # Which path the command line takes (and a warm page cache for every run).
    check = subprocess.run([*runs["cli"][:3], "--debug", *runs["cli"][3:]], cwd=_common.ROOT,
                           env={**os.environ, **ENV}, capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(check.stderr[-4000:])
    path_line = next((line for line in check.stderr.splitlines() if line.startswith("kerasurgery: ")), "?")
    for name, argv in runs.items():
        if name != "cli":
            run(argv)
    peaks: dict[str, list[int]] = {name: [] for name in runs}

    def timed(name: str) -> None:
        peaks[name].append(run(runs[name])[1])

    def prepare(name: str) -> None:
        # Outside the timing: no run pays for removing an earlier output (ext4 discards
        # its blocks) or for the writeback of the dirty pages an earlier run left behind
        # (`Model.save` does not fsync; the command line does, within its own time).
        outputs[name].unlink(missing_ok=True)
        os.sync()

    wall, _ = _common.interleaved({name: (lambda n=name: timed(n)) for name in runs}, rounds,
                                  prepare={name: (lambda n=name: prepare(n)) for name in runs})
    output_bytes = {name: outputs[name].stat().st_size for name in runs}
    # The command line leaves a fresh optimizer's zero slots unwritten (holes): what
    # reaches the disk is the allocated size.
    written = outputs["cli"].stat().st_blocks * 512
    speed = disk_write_speed(folder, written)
    for path in outputs.values():
        path.unlink(missing_ok=True)
    return {
        "input": source.name,
        "input_bytes": source.stat().st_size,
        "output_bytes": output_bytes,
        "cli_path": path_line,
        "s": {name: _common.summary(ts) for name, ts in wall.items()},
        "ratio": {name: _common.paired_ratio(wall[name], wall["baseline"]) for name in wall if name != "baseline"},
        "peak_bytes": {name: max(p) for name, p in peaks.items()},
        "cli_allocated_bytes": written,
        "disk_write_bytes_per_s": speed,
        "floor_s": written / speed,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096, help="4096: 50.3M parameters; 0: skip")
    parser.add_argument("--big-width", type=int, default=0, help="12928: 501M parameters; 0 (default): skip")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-rounds", type=int, default=3)
    parser.add_argument("--library", action="store_true", help="also time a script calling the library")
    parser.add_argument("--no-library", action="store_true", help=argparse.SUPPRESS)  # the default; kept for callers
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # no longer collected
    parser.add_argument("--workdir", help="where model files go (default: a folder in the temp dir)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    folder = _models.workdir(args.workdir)
    sizes = []
    if args.width:
        sizes.append(("compiled (Adam)", args.width, _models.pruned_mlp(args.width, folder), args.rounds))
    if args.big_width:
        sizes.append(("no training config", args.big_width, big_mlp(args.big_width, folder), args.big_rounds))
    result = {"benchmark": "freeze", "machine": _common.machine(), "sizes": []}
    for label, width, source, rounds in sizes:
        measured = measure(source, folder, rounds, args.library and not args.no_library)
        measured.update({"width": width, "params": _models.params(width), "model": label, "rounds": rounds})
        result["sizes"].append(measured)
        _print(measured)
    # The first size's numbers at the top level too, where run_all.py and bench_scaling.py read them.
    result.update({**result["sizes"][0], "cli_available": True, "ours": "cli"})
    _common.print_machine(result["machine"])
    _common.write_json(args.json, result)
    return result


def _print(m: dict) -> None:
    print(f"freeze of a {m['params'] / 1e6:.1f}M-parameter .keras MLP, {m['model']} "
          f"({m['input_bytes'] / 1e6:.0f} MB, half of each kernel exactly 0), whole processes, "
          f"{m['rounds']} interleaved rounds")
    print(f"  command line: {m['cli_path']}")
    print(f"  {'run':<9} {'median s':>9} {'min':>7} {'max':>7} {'peak MB':>8} {'out MB':>7}"
          "   ratio to baseline: median of paired [min, max]")
    for name, s in m["s"].items():
        line = (f"  {name:<9} {_common.fmt_s(s['median']):>9} {_common.fmt_s(s['min']):>7} "
                f"{_common.fmt_s(s['max']):>7} {m['peak_bytes'][name] / 1e6:>8.0f} "
                f"{m['output_bytes'][name] / 1e6:>7.0f}")
        r = m["ratio"].get(name)
        line += f"   {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]" if r else "   1 (baseline)"
        print(line)
    print(f"  floor: the command line's output ({m['cli_allocated_bytes'] / 1e6:.0f} MB on disk) over the "
          f"disk's write speed ({m['disk_write_bytes_per_s'] / 1e6:.0f} MB/s with fsync): {m['floor_s']:.2f} s")


if __name__ == "__main__":
    main()
