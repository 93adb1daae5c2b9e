"""Pruned LLM decoders, physically smaller and exact: masked Llama-architecture decoders (benchmarks/llm_model.py:
per layer one K/V group with its query heads, in layer 0 one query head of a live group, 10–50 % of the MLP
neurons, 24/256 of the hidden channels), exported by both LLM exporters — optimum-onnx (plain ops) and
onnxruntime-genai's model builder (GroupQueryAttention) — and optimized by sparsecut (align 1, gated by its
generation drive: prefill + greedy decode, no --data).

Per size × exporter: parameters before → after; the zero weights of the masked checkpoint and how many the lean
graph still holds (the rest, with the reasons the report gives); K/V heads per layer in the lean graph's cache
inputs; the gate's max rel error and greedy agreement; and, independently of the gate, the lean graph's greedy
generation (sparsecut.decoder.generate on onnxruntime) against transformers' own (`generate`, the same prompt):
tokens identical and the rel error of every step's logits. Optimize time and peak RSS (of the `sparsecut optimize`
process) against the fp32 weight bytes.

The exporters live in their own venvs (optimum-onnx 0.1 pins transformers 4.57; the genai 0.18 builder wants
transformers 5 and onnx-ir), each with torch==2.13.0 in the same pip call:

    python -m venv /tmp/optvenv && /tmp/optvenv/bin/pip install torch==2.13.0 optimum-onnx "transformers==4.57.*"
    python -m venv /tmp/genaivenv && /tmp/genaivenv/bin/pip install torch==2.13.0 "onnxruntime-genai==0.18.*" \\
        "transformers>=5" onnx-ir
    .venv/bin/python benchmarks/llm.py --sizes tiny 100m [--exporters optimum genai] [--time 10] [--json out.json]

With `--time ROUNDS`: the dense baseline (the masked export through every pass but channel removal) vs lean on
onnxruntime as a generator runs them (`sparsecut compare` of decoders): prefill at 128 and 512 tokens, decode
tokens/s at contexts 128 and 1024, interleaved, with 95 % intervals — beside the weight-bytes and MACs ratios that
bound them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from sparsecut.checking import checking_session
from sparsecut.decoder import DecoderInterface, generate
from sparsecut.modelfile import load_model

HERE = Path(__file__).resolve().parent
console = Console(width=180)


def _run(command: list[str], what: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def _optimize(source: Path, output: Path) -> tuple[dict, float, float]:
    """`sparsecut optimize --align 1 --json`, in a process of its own: its report, seconds and peak RSS (GiB)."""
    report = output.with_suffix(".report.json")
    command = [sys.executable, "-m", "sparsecut", "optimize", str(source), "-o", str(output), "--align", "1",
               "--json", str(report)]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"optimize {source} failed:\n{process.stderr.read()[-3000:] if process.stderr else ''}")
    return json.loads(report.read_text()), seconds, usage.ru_maxrss / 2**20


def _zero_weights(path: Path) -> int:
    model = onnx.load(str(path))
    return int(sum((onnx.numpy_helper.to_array(t) == 0).sum() for t in model.graph.initializer if len(t.dims) == 2))


def _cache_heads(path: Path) -> list[int]:
    model = onnx.load(str(path), load_external_data=False)
    found = {}
    for value in model.graph.input:
        match = re.match(r"past_key_values\.(\d+)\.key$", value.name)
        if match:
            found[int(match.group(1))] = value.type.tensor_type.shape.dim[1].dim_value
    return [found[i] for i in sorted(found)]


def _against_transformers(lean: Path, reference: Path) -> tuple[bool, float]:
    """The lean graph's greedy generation from transformers' prompt: tokens identical, max rel error of the
    logits (each step's last position, against the largest reference logit of that step)."""
    ref = np.load(reference)
    interface = DecoderInterface.of(load_model(lean), lean)
    assert interface is not None
    with checking_session(lean) as session:
        done = generate(session, interface, ref["prompt"], ref["tokens"].shape[1])
    logits = np.stack([step[:, -1] for step in done.logits], axis=1)
    rel = float(np.max(np.abs(logits - ref["logits"]).max(axis=-1) / np.abs(ref["logits"]).max(axis=-1)))
    return bool(np.array_equal(done.tokens, ref["tokens"])), rel


def _export(exporter: str, masked: Path, out: Path, python: dict[str, str]) -> Path:
    if exporter == "optimum":
        cli = str(Path(python["optimum"]).with_name("optimum-cli"))
        _run([cli, "export", "onnx", "--model", str(masked), "--task", "text-generation-with-past", str(out)],
             "optimum-cli export")  # fmt: skip
    else:
        _run([python["genai"], "-m", "onnxruntime_genai.models.builder", "-i", str(masked), "-o", str(out), "-p",
              "fp32", "-e", "cpu", "-c", str(out.parent / "builder-cache")], "the genai model builder")  # fmt: skip
    return out / "model.onnx"


def _dense(exported: Path) -> Path:
    """The export through every pass but channel removal (align 1, gated): the dense baseline lean is timed
    against, so that nothing but channel removal is credited to pruning."""
    from sparsecut.passes import OptimizeOptions, optimize_model
    from sparsecut.passes.registry import baseline_passes

    dense = exported.with_name("model.dense.onnx")
    options = OptimizeOptions(align=1)
    optimize_model(exported, dense, dataclasses.replace(options, passes=baseline_passes(options.passes)))
    return dense


def _timing(masked: Path, lean: Path, rounds: int, int4: bool, uniform: Path | None = None) -> dict:
    """The dense baseline (`masked`: the masked export through every pass but channel removal) vs lean on
    onnxruntime as a generator runs them (targets/decoding.py): prefill at 128 and 512 tokens, decode at contexts
    128 and 1024, interleaved; tokens/s and speedups with their intervals. With `int4`, both also in weight-only
    int4 (MatMulNBits), all four in the same rounds: the 2×2."""
    from sparsecut.passes.precision import PrecisionRequest, convert_precision
    from sparsecut.precision import Precision
    from sparsecut.targets.decoding import DecodeOptions, compare_decoders

    models = [masked, lean, *([uniform] if uniform is not None else [])]
    if int4:
        for fp32 in (masked, lean):
            quantized = fp32.with_name(fp32.stem + ".int4.onnx")
            convert_precision(fp32, quantized, PrecisionRequest(Precision("int4")))
            models.append(quantized)
    report = compare_decoders(models, DecodeOptions(prompts=(128, 512), contexts=(128, 1024), rounds=rounds))
    before, after = report.variants[:2]
    grid = {}
    if uniform is not None:
        same = report.variants[2]
        grid["uniform"] = {c: [same.tokens_per_s(int(c)), same.decode_speedup[c].to_dict()] for c in same.decode_ms}
        grid["uniform"]["weight_bytes"] = same.weight_bytes
    if int4:
        for variant, name in zip(report.variants[-2:], ("dense int4", "lean int4"), strict=True):
            grid[name] = {
                c: [variant.tokens_per_s(int(c)), variant.decode_speedup[c].to_dict()] for c in variant.decode_ms
            }
    return {
        "int4": grid,
        "device": report.device,
        "weight_bytes_ratio": before.weight_bytes / after.weight_bytes,
        "kv_bytes_per_token": [before.kv_bytes_per_token, after.kv_bytes_per_token],
        "tokens_per_s": {c: [before.tokens_per_s(int(c)), after.tokens_per_s(int(c))] for c in before.decode_ms},
        "decode_speedup": {c: s.to_dict() for c, s in after.decode_speedup.items()},
        "prefill_ms": {p: [before.prefill_ms[p], after.prefill_ms[p]] for p in before.prefill_ms},
        "prefill_speedup": {p: s.to_dict() for p, s in after.prefill_speedup.items()},
    }


def run(
    size: str,
    exporters: list[str],
    python: dict[str, str],
    work: Path,
    reuse: bool,
    timed: int,
    int4: bool,
    with_uniform: bool = False,
) -> list[dict]:
    """`reuse`: the masked folder, the reference and the exports already in `work` (from an earlier run) are
    taken as they are; only optimize runs again."""
    masked, recorded = work / f"{size}-masked", work / f"{size}-masks.json"
    reference = work / f"{size}-reference.npz"
    if not (reuse and recorded.exists() and reference.exists()):
        printed = _run([python["optimum"], str(HERE / "llm_model.py"), str(masked), "--size", size],
                       "making the masked model").stdout  # fmt: skip
        recorded.write_text(printed.strip().splitlines()[-1])
        _run([python["optimum"], str(HERE / "llm_model.py"), str(masked), "--reference", str(reference)],
             "transformers' generation")  # fmt: skip
    masks = json.loads(recorded.read_text())
    rows = []
    for exporter in exporters:
        exported = work / f"{size}-{exporter}" / "model.onnx"
        source = exported if reuse and exported.exists() else _export(exporter, masked, exported.parent, python)
        lean = work / f"{size}-{exporter}-lean" / "model.onnx"
        lean.parent.mkdir(exist_ok=True)
        report, seconds, rss = _optimize(source, lean)
        check = report["checks"][0]
        removal = next(p for p in report["passes"] if p["name"] == "remove-dead-channels")
        kept = {}
        for group in removal["groups"]:
            for reason, count in group["kept_dead"].items():
                kept[reason] = kept.get(reason, 0) + count
        same_tokens, rel = _against_transformers(lean, reference)
        weight_bytes = sum(p.stat().st_size for p in source.parent.glob("model.onnx*"))
        uniform = None
        if timed and with_uniform:
            made = work / f"{size}-uniform"
            if not (reuse and (made / "config.json").exists()):
                _run([python["optimum"], str(HERE / "llm_model.py"), str(made), "--size", size, "--uniform"],
                     "making the uniform model")  # fmt: skip
            exported = work / f"{size}-uniform-{exporter}" / "model.onnx"
            uniform = exported if reuse and exported.exists() else _export(exporter, made, exported.parent, python)
        # timed against the like-for-like reference: the same export through every pass but channel removal (and
        # the uniform model through the same passes)
        timing = _timing(_dense(source), lean, timed, int4, _dense(uniform) if uniform else None) if timed else {}
        rows.append({
            "size": size, "exporter": exporter, "params_before": report["before"]["params"],
            "params_after": report["after"]["params"], "zero_weights_masked": masks["zero_weights"],
            "zero_weights_left": _zero_weights(lean), "kept_dead": kept,
            "kv_heads": _cache_heads(lean), "gate": check["label"], "gate_rel": check["max_rel_error"],
            "transformers_tokens_identical": same_tokens, "transformers_rel": rel,
            "optimize_s": seconds, "peak_rss_gib": rss, "weights_gib": weight_bytes / 2**30,
            "macs_ratio": report["before"]["macs"] / max(1, report["after"]["macs"]), **timing,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "100m", "1b"])
    parser.add_argument("--exporters", nargs="+", default=["optimum", "genai"], choices=["optimum", "genai"])
    parser.add_argument("--optimum-python", default="/tmp/optvenv/bin/python")
    parser.add_argument("--genai-python", default="/tmp/genaivenv/bin/python")
    parser.add_argument("--work", type=Path, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="take the masked folders and exports --work holds")
    parser.add_argument("--time", type=int, default=0, metavar="ROUNDS",
                        help="also time the dense baseline vs lean, prefill and decode, interleaved, this many rounds")  # fmt: skip
    parser.add_argument("--int4", action="store_true", help="with --time: masked and lean in int4 too (the 2×2)")
    parser.add_argument("--uniform", action="store_true",
                        help="with --time: also a uniform physically smaller model of about the lean bytes")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    python = {"optimum": args.optimum_python, "genai": args.genai_python}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sparsecut-llm-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            console.print(f"[bold]{size}[/bold]: masking, exporting, optimizing …")
            rows += run(size, args.exporters, python, work, args.reuse, args.time, args.int4, args.uniform)
    table = Table(title="masked → lean decoders (align 1, gated by generation)", title_justify="left")
    for column in ("size", "exporter", "params", "zero weights left", "K/V heads", "gate rel", "vs transformers",
                   "optimize", "peak RSS / weights"):  # fmt: skip
        table.add_column(column)
    for r in rows:
        left = f"{r['zero_weights_left']:,} of {r['zero_weights_masked']:,} ({100 * r['zero_weights_left'] / max(1, r['zero_weights_masked']):.1f} %)"  # fmt: skip
        table.add_row(
            r["size"], r["exporter"], f"{r['params_before']:,} → {r['params_after']:,}", left,
            "/".join(map(str, r["kv_heads"])), f"{r['gate_rel']:.1e}",
            f"tokens {'identical' if r['transformers_tokens_identical'] else 'DIFFER'}, rel {r['transformers_rel']:.1e}",
            f"{r['optimize_s']:.1f} s", f"{r['peak_rss_gib']:.2f} / {r['weights_gib']:.2f} GiB",
        )  # fmt: skip
    console.print(table)
    timed = [r for r in rows if "tokens_per_s" in r]
    if timed:
        speed = Table(title=f"dense baseline → lean on onnxruntime ({timed[0]['device']}); [95 % interval]",
                      title_justify="left")  # fmt: skip
        for column in ("size", "exporter", "weight bytes ratio", "MACs ratio", "decode @128 tok/s", "decode @1024 tok/s",
                       "prefill 128", "prefill 512"):  # fmt: skip
            speed.add_column(column)

        def ratio(s: dict) -> str:
            return f"{s['value']:.2f}× [{s['low']:.2f}–{s['high']:.2f}]"

        for r in timed:
            tps, dec, pre = r["tokens_per_s"], r["decode_speedup"], r["prefill_speedup"]
            speed.add_row(r["size"], r["exporter"], f"{r['weight_bytes_ratio']:.2f}×", f"{r['macs_ratio']:.2f}×",
                          *(f"{tps[c][0]:.1f} → {tps[c][1]:.1f} ({ratio(dec[c])})" for c in ("128", "1024")),
                          *(f"{r['prefill_ms'][p][0]:.1f} → {r['prefill_ms'][p][1]:.1f} ms ({ratio(pre[p])})"
                            for p in ("128", "512")))  # fmt: skip
        console.print(speed)
        for r in timed:
            for name, contexts in r.get("int4", {}).items():
                shown = {c: v for c, v in contexts.items() if c != "weight_bytes"}
                cells = ", ".join(f"@{c}: {tps:.1f} tok/s ({ratio(s)} vs dense fp32)" for c, (tps, s) in shown.items())
                extra = f" ({contexts['weight_bytes'] / 1e6:.1f} MB)" if "weight_bytes" in contexts else ""
                console.print(f"{r['size']} {r['exporter']} {name}{extra}: {cells}")
    for r in rows:
        if r["kept_dead"]:
            console.print(f"{r['size']} {r['exporter']}: dead channels kept: {r['kept_dead']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
