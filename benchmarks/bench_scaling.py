"""How the costs grow with parameters: `freeze` time and the training-step ratio at three sizes.

Runs bench_freeze.py on pruned MLPs of three widths (12.6M, 25.2M and 50.3M
parameters by default) and bench_step.py (TensorFlow graph mode, dense /
shared / per_entry) on 3-layer MLPs of three widths, each in its own process,
and prints one table. Linear growth shows as a constant cost per million
parameters: for `freeze`, the time above the plain load + save per million
parameters; for training, a ratio that does not grow with width.

    python benchmarks/bench_scaling.py [--freeze-widths 2048,2896,4096] [--step-widths 512,1024,2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

HERE = Path(__file__).resolve().parent


def _widths(text: str) -> list[int]:
    return [int(w) for w in text.split(",") if w.strip()]


def _run(script: str, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        result = subprocess.run([sys.executable, str(HERE / script), *args, "--json", str(out)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{script} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--freeze-widths", type=_widths, default=[2048, 2896, 4096])
    parser.add_argument("--freeze-rounds", type=int, default=3)
    parser.add_argument("--step-widths", type=_widths, default=[512, 1024, 2048])
    parser.add_argument("--step-rounds", type=int, default=10)
    parser.add_argument("--workdir")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    extra = ["--workdir", args.workdir] if args.workdir else []

    freeze = [
        _run("bench_freeze.py", ["--width", str(w), "--rounds", str(args.freeze_rounds), "--no-library", *extra])
        for w in args.freeze_widths
    ]
    step = []
    for w in args.step_widths:
        # Keep each sample near 1024 x 1024 x 256 x 4 multiply-adds of work.
        steps = max(1, round(4 * (1024 / w) ** 2))
        step.append(_run("bench_step.py", ["--width", str(w), "--steps", str(steps), "--rounds", str(args.step_rounds),
                                           "--variants", "dense,shared,per_entry"]))
    result = {"benchmark": "scaling", "machine": _common.machine(), "freeze": freeze, "step": step}

    print("scaling: freeze (whole processes) and training step (TensorFlow graph mode) at three sizes")
    _common.print_machine(result["machine"])
    print(f"  {'params':>8} {'load+save s':>12} {'freeze s':>9} {'ratio':>6} {'extra s':>8} {'extra s per M':>14}")
    for r in freeze:
        ours = r["ours"]
        base, mine = r["s"]["baseline"]["median"], r["s"][ours]["median"]
        print(f"  {r['params'] / 1e6:7.1f}M {base:12.2f} {mine:9.2f} {r['ratio'][ours]['median']:6.2f} "
              f"{mine - base:8.2f} {(mine - base) / (r['params'] / 1e6):14.3f}")
    print(f"  {'params':>8} {'dense ms':>9} {'shared':>7} {'per_entry':>10} {'shared CPU':>11} {'per_entry CPU':>14}")
    for r in step:
        print(f"  {r['params'] / 1e6:7.1f}M {r['step_s']['dense']['median'] * 1e3:9.1f} "
              f"{r['ratio']['shared']['median']:7.3f} {r['ratio']['per_entry']['median']:10.3f} "
              f"{r['cpu_ratio']['shared']['median']:11.3f} {r['cpu_ratio']['per_entry']['median']:14.3f}")
    _common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
