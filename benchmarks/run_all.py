"""Runs every benchmark of issue 5 and writes a Markdown report (benchmarks/RESULTS.md).

Each benchmark runs in its own process (the JAX one with KERAS_BACKEND=jax) and
hands its numbers back as JSON; this script only collects them and renders the
tables. The full run takes about 15-22 minutes on a 2-core machine (21.8 on 2026-12-03, under load); `--quick`
shrinks sizes and repetitions to check that everything works (a few minutes;
its numbers are not for the record).

    python benchmarks/run_all.py            # full run -> benchmarks/RESULTS.md
    python benchmarks/run_all.py --quick    # smoke run -> benchmarks/RESULTS-quick.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

FULL = {
    "step": {"--steps": "4", "--rounds": "16"},
    "step_models": {"--steps": "2", "--rounds": "10"},
    "pruning": {"--rounds": "10", "--fit-steps": "300", "--fit-rounds": "4"},
    "freeze": {"--width": "4096", "--rounds": "3"},
    "clone": {"--widths": "1024,4096", "--rounds": "5"},
    "startup": {"--rounds": "7", "--large-width": "4096"},
    "scaling": {"--freeze-widths": "2048,2896,4096", "--freeze-rounds": "3",
                "--step-widths": "512,1024,2048", "--step-rounds": "10"},
}
QUICK = {
    "step": {"--steps": "2", "--rounds": "4"},
    "step_models": {"--steps": "1", "--rounds": "2"},
    "pruning": {"--rounds": "2", "--fit-steps": "100", "--frequency": "50", "--fit-rounds": "1"},
    "freeze": {"--width": "2048", "--rounds": "1"},
    "clone": {"--widths": "512", "--rounds": "1"},
    "startup": {"--rounds": "2", "--large-width": "0"},
    "scaling": {"--freeze-widths": "1024,1448,2048", "--freeze-rounds": "1",
                "--step-widths": "256,512,1024", "--step-rounds": "3"},
}
STEP_CONFIGS = [("tensorflow", "graph"), ("tensorflow", "xla"), ("jax", "xla")]
STEP_MODELS = ("cnn", "transformer")  # bench_step.py --model, besides the MLP
TARGETS = {("tensorflow", "graph"): 1.03, ("tensorflow", "xla"): 1.05, ("jax", "xla"): 1.05}


def run(script: str, args: dict[str, str], extra: list[str] | None = None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        argv = [sys.executable, str(HERE / script)]
        for key, value in args.items():
            argv += [key] if value is None else [key, value]
        argv += (extra or []) + ["--json", str(out)]
        print("$", " ".join(argv[1:]), flush=True)
        start = time.perf_counter()
        result = subprocess.run(argv, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            print(result.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{script} failed")
        document = json.loads(out.read_text())
        document["elapsed_s"] = time.perf_counter() - start
        print(f"({document['elapsed_s']:.0f} s)\n", flush=True)
        return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions: a smoke run")
    parser.add_argument("--output", help="Markdown file (default: benchmarks/RESULTS.md, or RESULTS-quick.md)")
    parser.add_argument("--workdir", help="where model files go (default: a folder in the temp dir)")
    parser.add_argument("--render", metavar="RESULTS.json", help="only re-render the Markdown from saved results")
    args = parser.parse_args(argv)
    if args.render:
        source = Path(args.render)
        target = Path(args.output) if args.output else source.with_suffix(".md")
        target.write_text(render(json.loads(source.read_text())))
        print(f"wrote {target}")
        return 0
    plan = QUICK if args.quick else FULL
    output = Path(args.output) if args.output else HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    work = ["--workdir", args.workdir] if args.workdir else []

    started = time.perf_counter()
    info = _common.machine()
    results: dict = {"machine": info, "quick": args.quick, "commit": _commit()}
    results["memory"] = run("bench_memory.py", {})
    results["step"] = [
        run("bench_step.py", {**plan["step"], "--backend": backend, "--mode": mode})
        for backend, mode in STEP_CONFIGS
    ]
    results["step_models"] = [
        run("bench_step.py", {**plan["step_models"], "--model": model, "--backend": backend, "--mode": mode})
        for model in STEP_MODELS for backend, mode in STEP_CONFIGS
    ]
    results["pruning"] = run("bench_pruning.py", plan["pruning"])
    results["freeze"] = run("bench_freeze.py", {**plan["freeze"], "--profile": None}, work)
    results["clone"] = run("bench_clone.py", plan["clone"])
    results["startup"] = run("bench_startup.py", plan["startup"], work)
    results["scaling"] = run("bench_scaling.py", plan["scaling"], work)
    results["elapsed_s"] = time.perf_counter() - started
    results["load_end"] = _common.load()
    output.write_text(render(results))
    output.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(f"wrote {output} and {output.with_suffix('.json')} ({results['elapsed_s'] / 60:.1f} min)")
    return 0


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
        # From the repository root: a pathspec is relative to the working folder.
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kerasurgery"], cwd=HERE.parent,
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes in kerasurgery/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _within(ratio: float, target: float) -> bool:
    """`ratio` <= `target` at the three decimals shown (run-to-run noise is larger)."""
    return round(ratio, 3) <= target


def _r(r: dict) -> str:
    return f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]"


def render(res: dict) -> str:
    m = res["machine"]
    step0 = res["step"][0]
    versions = ", ".join(f"{k} {v}" for k, v in step0.get("versions", {}).items())
    jax_versions = res["step"][2].get("versions", {})
    if "jax" in jax_versions and "jax" not in step0.get("versions", {}):
        versions += f", jax {jax_versions['jax']}"
    lines = [
        "# kerasurgery benchmarks (issue 5)",
        "",
        "QUICK RUN: reduced sizes and repetitions; not for the record." if res["quick"] else "",
        f"Run {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, no GPU; "
        f"Python {m['python']}, {versions}; code at {res['commit']}. "
        f"Load average (1, 5, 15 min) at the start {m['load']}, at the end {res['load_end']}; "
        f"the machine was shared with other jobs, so wall times are noisy (see the min/max columns). "
        f"Whole suite: {res['elapsed_s'] / 60:.1f} min.",
        "",
        "Reproduce: `python benchmarks/run_all.py" + (" --quick" if res["quick"] else "") + "` "
        "(each benchmark also runs alone: `python benchmarks/bench_*.py --help`).",
        "",
        "Ratios are medians over interleaved rounds of (ours / baseline) from the same run, with the",
        "[min, max] over rounds. Step times are also given as process CPU time (all threads), which",
        "counts work rather than waiting and is far less disturbed by other jobs on the machine.",
        "",
        "## Summary against the targets",
        "",
        "| measure | baseline | ours | ratio (median [min, max]) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["step"]:
        target = TARGETS[(r["backend"], r["mode"])]
        label = f"{r['backend']} {'jit' if r['backend'] == 'jax' else r['mode']}"
        base = r["step_s"]["dense"]["median"] * 1e3
        base_cpu = r["cpu_step_s"]["dense"]["median"] * 1e3
        for variant in ("shared", "per_entry"):
            wall, cpu = r["ratio"][variant], r["cpu_ratio"][variant]
            lines.append(
                f"| training step, {label}, {variant} pins, wall | {base:.1f} ms | "
                f"{r['step_s'][variant]['median'] * 1e3:.1f} ms | {_r(wall)} | <= {target} | {_yes(_within(wall['median'], target))} |")
            lines.append(
                f"| training step, {label}, {variant} pins, CPU time | {base_cpu:.1f} ms | "
                f"{r['cpu_step_s'][variant]['median'] * 1e3:.1f} ms | {_r(cpu)} | <= {target} | {_yes(_within(cpu['median'], target))} |")
    for r in res.get("step_models", []):
        target = TARGETS[(r["backend"], r["mode"])]
        label = f"{r['model']}, {r['backend']} {'jit' if r['backend'] == 'jax' else r['mode']}"
        base_cpu = r["cpu_step_s"][r["baseline"]]["median"] * 1e3
        for variant in ("shared", "per_entry"):
            if variant in r["cpu_ratio"]:
                cpu = r["cpu_ratio"][variant]
                lines.append(
                    f"| training step, {label}, {variant} pins, CPU time | {base_cpu:.1f} ms | "
                    f"{r['cpu_step_s'][variant]['median'] * 1e3:.1f} ms | {_r(cpu)} | <= {target} | "
                    f"{_yes(_within(cpu['median'], target))} |")
    p = res.get("pruning")
    if p and p.get("fit"):
        fit = p["fit"]
        for key, what in (("ratio", "wall"), ("cpu_ratio", "CPU time")):
            t = "s" if key == "ratio" else "cpu_s"
            lines.append(
                f"| `fit` of {fit['steps']} steps with `GradualPruning` every {fit['frequency']} vs without, "
                f"{what} | {fit[t]['fit']['median']:.2f} s | {fit[t]['fit + GradualPruning']['median']:.2f} s | "
                f"{_r(fit[key])} | - | - |")
    rows = res["memory"]["rows"]
    lines.append(f"| extra state per kernel entry, shared pins | 0 B | {rows['shared']['extra_per_entry']:.4f} B | - | "
                 f"<= ~1 B | {_yes(rows['shared']['extra_per_entry'] <= 1.01)} |")
    lines.append(f"| extra state per kernel entry, per-entry pins | 0 B | {rows['per_entry']['extra_per_entry']:.4f} B | - | "
                 f"<= 5 B | {_yes(rows['per_entry']['extra_per_entry'] <= 5.01)} |")
    f = res["freeze"]
    ours = f["ours"]
    lines.append(
        f"| `freeze` {f['params'] / 1e6:.1f}M-parameter .keras, whole process ({ours}) vs load + save | "
        f"{f['s']['baseline']['median']:.2f} s | {f['s'][ours]['median']:.2f} s | {_r(f['ratio'][ours])} | <= 0.3 | "
        f"{_yes(f['ratio'][ours]['median'] <= 0.3)} |")
    for c in (res.get("clone") or {}).get("sizes", []):
        base = c["summary"]["baseline"]
        for variant in ("zeros", "fraction"):
            if variant in c["ratio"]:
                r, ours = c["ratio"][variant], c["summary"][variant]
                lines.append(
                    f"| library `freeze` ({variant}) of a {c['params'] / 1e6:.1f}M-parameter model in memory vs "
                    f"`clone_model` + `set_weights`, first call: time | {base['cold_s']['median']:.3f} s | "
                    f"{ours['cold_s']['median']:.3f} s | {_r(r['cold_s'])} | - | - |")
                lines.append(
                    f"| the same, peak memory increase | {base['peak_increase_bytes']['median'] / 1e6:.0f} MB | "
                    f"{ours['peak_increase_bytes']['median'] / 1e6:.0f} MB | {_r(r['peak_increase_bytes'])} | - | - |")
    s = res["startup"]
    if "skipped" in s:
        lines.append(f"| `inspect`, `--help` vs `import tensorflow` | - | - | - | <= 0.1 | skipped: {s['skipped']} |")
    else:
        for name in ("help", "inspect", "inspect_large"):
            if name in s["s"]:
                what = {"help": "`--help`", "inspect": "`inspect` (3.1M model)",
                        "inspect_large": "`inspect --json` (50.3M model)"}[name]
                lines.append(
                    f"| {what} vs `import tensorflow`, whole process | {s['s']['baseline']['median']:.2f} s | "
                    f"{s['s'][name]['median']:.3f} s | {_r(s['ratio'][name])} | <= 0.1 | {_yes(s['ratio'][name]['median'] <= 0.1)} |")
    lines += ["", "Notes on the numbers:", ""]
    if res["memory"]["rows"]["per_entry"]["extra_per_entry"] > 5:
        lines.append("- Per-entry state is exactly 5 bytes per kernel entry (1-byte mask + 4-byte float32 value); "
                     "the bias mask and values add 5 bytes per unit, 0.0049 per kernel entry at 1024 inputs.")
    if f.get("cli_available") is False:
        lines.append("- The command line was not available: `freeze` was measured through a script calling "
                     "load_model / freeze / save_model as a whole process.")
    lines.append("- Training-step wall-time ratios swing with the other jobs on the machine; "
                 "the CPU-time ratios are the steadier estimate of the cost. `ref_multiply` in (a) is the "
                 "cheapest unfused reference (and not exact): the floor for graph mode without fusion.")
    if not any(r.get("device") == "gpu" for r in res["step"]):
        lines.append("- GPU target (JAX, 3 x 4096, batch 8192, bfloat16 and float32, <= 1.02): not measured, "
                     "no GPU on this machine. On a GPU machine: `python benchmarks/bench_step.py --backend jax "
                     "--width 4096 --batch 8192 --dtype bfloat16` (and `--dtype float32`).")

    lines += _step_tables(res)
    lines += _step_model_tables(res)
    lines += _pruning_tables(res)
    lines += _memory_table(res)
    lines += _freeze_tables(res)
    lines += _clone_tables(res)
    lines += _startup_table(res)
    lines += _scaling_tables(res)
    return "\n".join(line for line in lines if line is not None) + "\n"


def _step_tables(res: dict) -> list[str]:
    r0 = res["step"][0]
    out = [
        "",
        "## (a) Training step",
        "",
        f"{r0['layers']} Dense layers of {r0['width']} units (ReLU), batch {r0['batch']}, Adam, MSE, "
        f"{r0['fraction']:.0%} of each kernel pinned (a fixed random half). One sample = "
        f"{r0['steps_per_sample']} `train_on_batch` steps, divided by {r0['steps_per_sample']}; {r0['rounds']} samples "
        "per variant, interleaved, order rotating each round (short runs, to keep the whole suite near 10 minutes). "
        "`shared`/`per_entry` are kerasurgery; `ref_*` are minimal reference layers written in the benchmark: "
        "`ref_where` = `ops.where(bool mask, value tensor, kernel)` (what MaskedDense did for per-entry pins "
        "before issue 5), `ref_where_scalar` = the same with a scalar value (MaskedDense's shared pins before), "
        "`ref_multiply` = kernel x float 0/1 matrix (zero pins only; not bit-exact: -0.0, NaN).",
        "",
    ]
    for r in res["step"]:
        out += _step_table(r)
    return out


def _step_table(r: dict, prefix: str = "") -> list[str]:
    label = f"{prefix}{r['backend']} {'(jit)' if r['backend'] == 'jax' else r['mode']}"
    out = [
        f"**{label}** (load before/after: {r['machine'].get('load_before')} / {r['machine']['load']})",
        "",
        "| variant | wall ms median [min, max] | wall ratio | CPU ms median [min, max] | CPU ratio |",
        "|---|---|---|---|---|",
    ]
    for v, s in r["step_s"].items():
        c = r["cpu_step_s"][v]
        wr = _r(r["ratio"][v]) if v in r["ratio"] else "1"
        cr = _r(r["cpu_ratio"][v]) if v in r["cpu_ratio"] else "1"
        out.append(f"| {v} | {s['median'] * 1e3:.1f} [{s['min'] * 1e3:.1f}, {s['max'] * 1e3:.1f}] | {wr} | "
                   f"{c['median'] * 1e3:.1f} [{c['min'] * 1e3:.1f}, {c['max'] * 1e3:.1f}] | {cr} |")
    out.append("")
    return out


def _step_model_tables(res: dict) -> list[str]:
    runs = res.get("step_models") or []
    if not runs:
        return []
    out = [
        "## (a2) Training step: CNN and transformer block",
        "",
        "Every supported layer frozen with `kerasurgery.freeze(model, {'*': rules.fraction(0.5, seed=1, "
        "value=...)})`: half of each kernel pinned, to 0.0 (`shared`) or at its current values "
        "(`per_entry`), against the same model unpinned (`plain`). Adam, MSE; `train_on_batch` steps, "
        "interleaved rounds as in (a).",
        "",
    ]
    seen = set()
    for r in runs:
        if r["model"] not in seen:
            seen.add(r["model"])
            out += [f"*{r['model']}*: {r['description']}, {r['params'] / 1e6:.2f}M parameters, batch {r['batch']}; "
                    f"{r['rounds']} samples of {r['steps_per_sample']} steps per variant. Pinned layers: "
                    f"{', '.join(r.get('pinned_layers', []))}.", ""]
        out += _step_table(r, f"{r['model']}, ")
    return out


def _pruning_tables(res: dict) -> list[str]:
    p = res.get("pruning")
    if not p:
        return []
    step = p["step"]
    out = [
        "## (a3) Pruning: the cost of `GradualPruning`",
        "",
        f"{p['layers']} x {p['width']} MLP ({p['params'] / 1e6:.2f}M parameters), frozen with "
        f"`{{'*': kerasurgery.Pin()}}` ({'/'.join(p['storage'])} pins), batch {p['batch']}, Adam, "
        f"{p['backend']} {p['mode']}; {'one ranking across layers' if p['across_layers'] else 'per layer'}. "
        f"One pruning step = `callback.prune(s)` from the state at s - {p['increment']:g} (restored before "
        f"each call, untimed), {p['rounds']} rounds interleaved with samples of {p['steps_per_sample']} training "
        f"steps of the same model (load before: {step['load_before']}).",
        "",
        "| call | wall ms median [min, max] | CPU ms median [min, max] | in training steps, wall | in training steps, CPU |",
        "|---|---|---|---|---|",
    ]
    for name, s in step["s"].items():
        c = step["cpu_s"][name]
        w = _r(step["in_train_steps"][name]) if name != "train" else "1"
        cr = _r(step["cpu_in_train_steps"][name]) if name != "train" else "1"
        what = "one training step" if name == "train" else f"`prune({name.split()[1]})`"
        out.append(f"| {what} | {s['median'] * 1e3:.1f} [{s['min'] * 1e3:.1f}, {s['max'] * 1e3:.1f}] | "
                   f"{c['median'] * 1e3:.1f} [{c['min'] * 1e3:.1f}, {c['max'] * 1e3:.1f}] | {w} | {cr} |")
    fit = p.get("fit")
    if fit:
        out += [
            "",
            f"Whole `fit` of {fit['steps']} steps ({fit['epochs']} epochs), `GradualPruning` every "
            f"{fit['frequency']} steps ({fit['pruning_steps']} pruning steps, {fit['schedule']}) vs the same "
            f"`fit` without it; each from no pins; {p['fit_rounds']} interleaved rounds (load before: "
            f"{fit['load_before']}). Sparsity at the end: {fit['final_sparsity']:.4f}.",
            "",
            "| run | wall s median [min, max] | CPU s median [min, max] |",
            "|---|---|---|",
        ]
        for name, s in fit["s"].items():
            c = fit["cpu_s"][name]
            out.append(f"| {name} | {s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}] | "
                       f"{c['median']:.2f} [{c['min']:.2f}, {c['max']:.2f}] |")
        out.append(f"| ratio | {_r(fit['ratio'])} | {_r(fit['cpu_ratio'])} |")
        out.append(f"| extra per pruning step | {fit['extra_s_per_pruning_step'] * 1e3:.0f} ms | "
                   f"{fit['extra_cpu_s_per_pruning_step'] * 1e3:.0f} ms |")
    return out + [""]


def _memory_table(res: dict) -> list[str]:
    m = res["memory"]
    out = [
        "## (b) Memory",
        "",
        f"One {m['kernel_shape'][0]} x {m['kernel_shape'][1]} layer; bytes counted exactly as entries x dtype size "
        "over the layer's variables. Adam's slots cover the trainable variables only (the raw kernel and bias, "
        "as for Dense). The effective kernel formed for each step is a temporary, not state.",
        "",
        "| layer | variable bytes | extra B per kernel entry | extra Adam B per entry | extra .keras file B per entry | extra .h5 file B per entry |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in m["rows"].items():
        out.append(f"| {name} | {row['variable_bytes']:,} | {row['extra_per_entry']:.4f} | "
                   f"{row['extra_optimizer_per_entry']:.4f} | {row['extra_keras_file_per_entry']:.4f} | "
                   f"{row['extra_h5_file_per_entry']:.4f} |")
    return out + [""]


def _freeze_tables(res: dict) -> list[str]:
    f = res["freeze"]
    out = [
        "## (c) `freeze` of a large model",
        "",
        f"Pruned MLP, {f['params']:,} parameters ({f['input_bytes'] / 1e6:.0f} MB .keras, half of each kernel "
        f"exactly 0, compiled with Adam). Whole processes, {f['rounds']} interleaved rounds "
        f"(load {f['machine']['load']}). baseline = `keras.models.load_model(IN).save(OUT)`; "
        "cli = `python -m kerasurgery freeze IN -o OUT --force`; library = a script calling "
        "`ks.load_model`, `ks.freeze(model, {'*': ks.rules.zeros()})`, `ks.save_model`.",
        "",
        "| run | s median [min, max] | ratio to baseline | output MB |",
        "|---|---|---|---|",
    ]
    for name, s in f["s"].items():
        ratio = _r(f["ratio"][name]) if name in f["ratio"] else "1"
        size = f["output_bytes"].get(name)
        out.append(f"| {name} | {s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}] | {ratio} | "
                   f"{size / 1e6:.0f} |" if size else f"| {name} | {s['median']:.2f} | {ratio} | - |")
    for name, p in f.get("profile", {}).items():
        out += ["", f"Where the time goes, one {name} run under cProfile ({p['total_s']:.2f} s with the profiler):", "",
                "| phase | s |", "|---|---|"]
        out += [f"| {ph['phase']} | {ph['s']:.2f} |" for ph in p["phases"]]
        if p["kerasurgery"]:
            out += ["", "| kerasurgery function | cumulative s | self s |", "|---|---|---|"]
            out += [f"| `{row['function']}` | {row['cumulative_s']:.2f} | {row['self_s']:.2f} |"
                    for row in p["kerasurgery"]]
    return out + [""]


def _clone_tables(res: dict) -> list[str]:
    c = res.get("clone")
    if not c:
        return []
    out = [
        "## (c2) Library `freeze` in a script vs `clone_model`",
        "",
        "The pruned MLP of (c) built in memory (half of each kernel exactly 0, uncompiled) in a fresh process "
        "per run; baseline = `keras.models.clone_model(model)` + `set_weights(model.get_weights())` (a copy "
        "with the same weights); zeros = `ks.freeze(model, {'*': ks.rules.zeros()})` (shared pins at 0.0); "
        "fraction = `ks.freeze(model, {'*': ks.rules.fraction(0.5, seed=0)})` (per-entry pins at the current "
        "values). Cold = the first call in the process, warm = a second one. Peak increase = the process's "
        "high-water mark after the cold call (reset with `/proc/self/clear_refs` just before it) minus its "
        "resident size before: it includes the new model's weights. Ratios: median over rounds of "
        "ours / baseline.",
        "",
    ]
    for m in c["sizes"]:
        out += [
            f"*{m['params'] / 1e6:.2f}M parameters*, {m['rounds']} interleaved rounds "
            f"(load before/after: {m['load_before']} / {m['load_after']}):",
            "",
            "| run | cold s median [min, max] | ratio | warm s median [min, max] | ratio | "
            "peak increase MB median [min, max] | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in m["summary"].items():
            r = m["ratio"].get(name)
            cells = [f"{s[k]['median'] / scale:{f}} [{s[k]['min'] / scale:{f}}, {s[k]['max'] / scale:{f}}] | "
                     f"{_r(r[k]) if r else '1'}"
                     for k, scale, f in (("cold_s", 1, ".3f"), ("warm_s", 1, ".3f"),
                                         ("peak_increase_bytes", 1e6, ".0f"))]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _startup_table(res: dict) -> list[str]:
    s = res["startup"]
    if "skipped" in s:
        return ["## (d) Start-up", "", f"Skipped: {s['skipped']}.", ""]
    out = [
        "## (d) Start-up",
        "",
        f"Whole processes, {s['rounds']} interleaved rounds (load {s['machine']['load']}). "
        f"TensorFlow imported by `--help` / `inspect`: {s['imports_tensorflow']['help']} / "
        f"{s['imports_tensorflow']['inspect']}.",
        "",
        "| run | s median [min, max] | ratio to `import tensorflow` |",
        "|---|---|---|",
    ]
    for name, t in s["s"].items():
        ratio = _r(s["ratio"][name]) if name in s["ratio"] else "1"
        what = {"baseline": '`python -c "import tensorflow"`', "help": "`kerasurgery --help`",
                "inspect": f"`kerasurgery inspect` ({s['files']['inspect']['bytes'] / 1e6:.0f} MB file)",
                "inspect_large": (f"`kerasurgery inspect --json` ({s['files']['inspect_large']['bytes'] / 1e6:.0f} MB file)"
                                  if "inspect_large" in s["files"] else name)}[name]
        out.append(f"| {what} | {t['median']:.3f} [{t['min']:.3f}, {t['max']:.3f}] | {ratio} |")
    return out + [""]


def _scaling_tables(res: dict) -> list[str]:
    s = res["scaling"]
    out = [
        "## (e) Scaling",
        "",
        "`freeze` (whole process, CLI) vs plain load + save of the pruned MLP at three sizes; "
        "'extra s per M' = (freeze - baseline) / million parameters, constant if the extra cost is linear.",
        "",
        "| parameters | load + save s [min, max] | freeze s [min, max] | ratio | extra s | extra s per M |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["freeze"]:
        ours = r["ours"]
        b, o = r["s"]["baseline"], r["s"][ours]
        out.append(f"| {r['params'] / 1e6:.1f}M | {b['median']:.2f} [{b['min']:.2f}, {b['max']:.2f}] | "
                   f"{o['median']:.2f} [{o['min']:.2f}, {o['max']:.2f}] | {r['ratio'][ours]['median']:.2f} | "
                   f"{o['median'] - b['median']:.2f} | {(o['median'] - b['median']) / (r['params'] / 1e6):.3f} |")
    out += [
        "",
        "Training step, TensorFlow graph mode, 3 layers, batch 256, half of each kernel pinned, at three widths "
        "(steps per sample scaled so each sample does similar work):",
        "",
        "| width (parameters) | dense ms (wall) | shared ratio wall / CPU | per_entry ratio wall / CPU |",
        "|---|---|---|---|",
    ]
    for r in s["step"]:
        out.append(f"| {r['width']} ({r['params'] / 1e6:.1f}M) | {r['step_s']['dense']['median'] * 1e3:.1f} | "
                   f"{r['ratio']['shared']['median']:.3f} / {r['cpu_ratio']['shared']['median']:.3f} | "
                   f"{r['ratio']['per_entry']['median']:.3f} / {r['cpu_ratio']['per_entry']['median']:.3f} |")
    return out + [""]


if __name__ == "__main__":
    raise SystemExit(main())
