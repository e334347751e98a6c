"""`kerasurgery freeze` of a ~50M-parameter `.keras` model vs plain Keras load + save.

Both are timed as whole processes (Python start, imports, load, work, save),
interleaved round by round, on the same input file:

    baseline   python -c "keras.models.load_model(IN).save(OUT)"
    cli        python -m kerasurgery freeze IN -o OUT --force   (rule: exact zeros)
    library    python -c "ks.save_model(ks.freeze(ks.load_model(IN), {'*': zeros}), OUT)"

The input is a pruned MLP (half of each kernel exactly 0; see _models.py), so
`freeze` pins half of every kernel at one shared value. With `--profile`, one
more run of each under cProfile splits the time into phases (imports, load,
freeze, save, the CLI's report) and lists the functions where it goes.

    python benchmarks/bench_freeze.py [--width 4096] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile  # noqa: F401  (run as `python -m cProfile`)
import pstats
import subprocess
import sys
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

# Phases of a profiled run: (label, file suffix, function name).
PHASES = [
    ("import keras + tensorflow", "keras/__init__.py", "<module>"),
    ("load (kerasurgery.load_model)", "kerasurgery/saving.py", "load_model"),
    ("load (keras.models.load_model)", "keras/src/saving/saving_api.py", "load_model"),
    ("freeze (kerasurgery.freeze)", "kerasurgery/surgery.py", "freeze"),
    ("save (kerasurgery.save_model)", "kerasurgery/saving.py", "save_model"),
    ("save (keras Model.save)", "keras/src/models/model.py", "save"),
    ("CLI report (re-reads the output)", "kerasurgery/cli.py", "_report_written"),
]


def cli_available() -> bool:
    if not (_common.ROOT / "kerasurgery" / "cli.py").exists():
        return False
    result = subprocess.run([sys.executable, "-m", "kerasurgery", "--help"], cwd=_common.ROOT,
                            capture_output=True, text=True)
    return result.returncode == 0 and "freeze" in result.stdout


def commands(source: Path, folder: Path, with_cli: bool) -> dict[str, list[str]]:
    runs = {"baseline": [sys.executable, "-c", BASELINE, str(source), str(folder / "plain.keras")]}
    if with_cli:
        runs["cli"] = [sys.executable, "-m", "kerasurgery", "freeze", str(source),
                       "-o", str(folder / "frozen_cli.keras"), "--force"]
    runs["library"] = [sys.executable, "-c", LIBRARY, str(source), str(folder / "frozen_lib.keras")]
    return runs


def profile(argv: list[str], out: Path) -> dict:
    """Runs `argv` (a python command) under cProfile; returns phases and top functions."""
    if argv[1] == "-c":
        script = out.with_suffix(".py")
        script.write_text(argv[2])
        profiled = [sys.executable, "-m", "cProfile", "-o", str(out), str(script), *argv[3:]]
    else:  # -m module ...
        profiled = [sys.executable, "-m", "cProfile", "-o", str(out), *argv[1:]]
    _common.run_process(profiled, env=ENV)
    stats = pstats.Stats(str(out))
    total = max(ct for (_, _, _, ct, _) in stats.stats.values())
    phases = []
    for label, suffix, name in PHASES:
        times = [ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()
                 if file.endswith(suffix) and func == name]
        if times:
            phases.append({"phase": label, "s": max(times)})
    own = sorted(
        ((tt, ct, f"{Path(file).parent.name}/{Path(file).name}:{line}({func})")
         for (file, line, func), (_, _, tt, ct, _) in stats.stats.items()),
        reverse=True,
    )[:15]
    ours = sorted(
        ((ct, tt, f"{Path(file).name}:{line}({func})")
         for (file, line, func), (_, _, tt, ct, _) in stats.stats.items()
         if "/kerasurgery/" in file and func not in ("<module>", "main")),
        reverse=True,
    )[:20]
    return {
        "total_s": total,
        "phases": phases,
        "top_self": [{"function": f, "self_s": tt, "cumulative_s": ct} for tt, ct, f in own],
        "kerasurgery": [{"function": f, "cumulative_s": ct, "self_s": tt} for ct, tt, f in ours],
        "file": str(out),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096, help="4096: 50.3M parameters")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also profile one run of each with cProfile")
    parser.add_argument("--no-library", action="store_true", help="skip the library-script run")
    parser.add_argument("--workdir", help="where model files go (default: a folder in the temp dir)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    folder = _models.workdir(args.workdir)
    source = _models.pruned_mlp(args.width, folder)
    with_cli = cli_available()
    runs = commands(source, folder, with_cli)
    if args.no_library and with_cli:
        runs.pop("library")
    for argv_ in runs.values():  # warm the page cache and check that each works
        _common.run_process(argv_, env=ENV)

    wall, _ = _common.interleaved({name: (lambda a=a: _common.run_process(a, env=ENV)) for name, a in runs.items()},
                                  args.rounds)
    ours = "cli" if with_cli else "library"
    result = {
        "benchmark": "freeze",
        "width": args.width,
        "params": _models.params(args.width),
        "input_bytes": source.stat().st_size,
        "output_bytes": {name: (folder / name_).stat().st_size for name, name_ in
                         (("baseline", "plain.keras"), ("cli", "frozen_cli.keras"), ("library", "frozen_lib.keras"))
                         if (folder / name_).exists() and name in runs},
        "cli_available": with_cli,
        "ours": ours,
        "rounds": args.rounds,
        "machine": _common.machine(),
        "s": {name: _common.summary(ts) for name, ts in wall.items()},
        "ratio": {name: _common.paired_ratio(wall[name], wall["baseline"]) for name in wall if name != "baseline"},
    }
    if args.profile:
        result["profile"] = {
            name: profile(runs[name], folder / f"{name}_{args.width}.prof")
            for name in ("baseline", ours)
        }
    for name in ("plain.keras", "frozen_cli.keras", "frozen_lib.keras"):
        (folder / name).unlink(missing_ok=True)
    _print(result)
    _common.write_json(args.json, result)
    return result


def _print(result: dict) -> None:
    print(f"freeze of a {result['params'] / 1e6:.1f}M-parameter .keras model "
          f"({result['input_bytes'] / 1e6:.0f} MB, half of each kernel exactly 0), whole processes, "
          f"{result['rounds']} interleaved rounds")
    if not result["cli_available"]:
        print("NOTE: the kerasurgery CLI is not available; 'library' (a script calling "
              "load_model/freeze/save_model) stands in for it")
    _common.print_machine(result["machine"])
    print(f"  {'run':<9} {'median s':>9} {'min':>7} {'max':>7}   ratio to baseline: median of paired [min, max]")
    for name, s in result["s"].items():
        line = f"  {name:<9} {_common.fmt_s(s['median']):>9} {_common.fmt_s(s['min']):>7} {_common.fmt_s(s['max']):>7}"
        r = result["ratio"].get(name)
        line += f"   {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]" if r else "   1 (baseline)"
        print(line)
    for name, p in result.get("profile", {}).items():
        print(f"profile of one {name} run (cProfile, {p['total_s']:.2f} s under the profiler): {p['file']}")
        for phase in p["phases"]:
            print(f"    {phase['phase']:<36} {phase['s']:6.2f} s")
        if p["kerasurgery"]:
            print("  kerasurgery functions by cumulative time:")
            for row in p["kerasurgery"][:12]:
                print(f"    {row['function']:<48} {row['cumulative_s']:6.2f} s (self {row['self_s']:.2f})")
        print("  functions by self time:")
        for row in p["top_self"][:10]:
            print(f"    {row['function']:<60} {row['self_s']:6.2f} s")


if __name__ == "__main__":
    main()
