"""Does remove-dead-channels read the CNNs users bring? A corpus of real topologies, each masked with the channels
Torch-Pruning would remove, optimized by sparsecut, and compared with Torch-Pruning's own physically pruned model.

Per model (seeded random init with trained-like BatchNorm; Torch-Pruning's MetaPruner, L1 magnitude, ratio 0.4,
its DepGraph groups, the classifier ignored): the masked model (those channels' weights zeroed, nothing removed)
is exported and optimized (`align 1`, lossless, gated at rtol 1e-4); Torch-Pruning's physically pruned copy is
exported the same way. Printed per model:

- exact: the gate's max relative error of lean vs masked (≤ 1e-4 or nothing is written);
- removed: the weights sparsecut removed over those Torch-Pruning removed (both counted in the exported ONNX
  files, so folded and explicit BatchNorm count alike); target ≥ 90 % where the channels do not pass a LayerNorm;
- lean/physical p50: sparsecut's lean model over Torch-Pruning's physical one, interleaved on onnxruntime CPU,
  with its 95 % interval;
- barriers and rule errors sparsecut met (a rule error is a bug: the node was kept whole instead).

Where Torch-Pruning itself fails (raises, or its pruned model does not run), the row says so, and the model is
masked per layer instead (each conv's 40 % lowest-L1 filters, independently, as `torch.nn.utils.prune.ln_structured`
would): sparsecut removes what it can exactly; "params removed / zero" (removed weights over weights that are zero
in the masked file) says how much that was.

timm and Torch-Pruning are benchmark-only dependencies (see benchmarks/alignment.py); timm needs ../shared/tvshim.py.

    .venv/bin/python benchmarks/zoo.py [--models resnet18 shufflenet ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import load_tvshim, model_arguments, prune_both_ways, trained_like_batchnorm
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch import nn

from sparsecut.cost import count_costs
from sparsecut.exporter import ExportOptions, export_module
from sparsecut.modelfile import load_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.targets import ProfileOptions, compare_models

# timm family → (model name, input size, what it brings)
TIMM = {
    "resnet": ("resnet18", 128, "residual basic blocks"),
    "resnext": ("resnext26ts", 128, "grouped 3×3 convs (cardinality 32)"),
    "regnet": ("regnety_002", 128, "grouped convs (group width 8) + SE"),
    "dla": ("dla34", 128, "deep layer aggregation: tree Concat + 1×1 roots"),
    "densenet": ("densenet121", 128, "dense Concat, BatchNorm after Concat"),
    "efficientnet": ("efficientnet_b0", 128, "depthwise + SE + SiLU"),
    "mobilenetv3": ("mobilenetv3_small_100", 128, "depthwise + SE + hard-swish"),
    "ghostnet": ("ghostnet_100", 128, "ghost modules: cheap depthwise features, Concat, Slice"),
    "convnext": ("convnext_atto", 128, "depthwise 7×7, channels-last LayerNorm, MLP (hidden masked)"),
    "hrnet": ("hrnet_w18_small", 128, "multi-branch, multi-resolution fusion (Resize)"),
    "res2net": ("res2net50_14w_8s", 128, "hierarchical Split → conv → Add → Concat"),
    "vit": ("vit_tiny_patch16_224", 224, "transformer MLP hidden neurons (masked)"),
}
LAYERNORM_FAMILIES = {"convnext", "vit"}  # only their MLP hidden is masked: the rest passes a LayerNorm


# ------------------------------------------------------------------------------------------------ plain torch
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: split channels in half, transform one half (1×1 → depthwise 3×3 → 1×1), concat,
    shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], dim=1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.units = nn.Sequential(*(ShuffleUnit(width) for _ in range(4)))
        self.head = nn.Sequential(nn.Conv2d(width, 128, 1), nn.ReLU())
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.units(self.stem(x))).mean((2, 3)))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class UNet(nn.Module):
    """A two-level U-Net: encoder, max-pool, ConvTranspose upsampling, skip Concat, segmentation head."""

    def __init__(self, width: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.enc1, self.enc2 = _double_conv(3, width), _double_conv(width, 2 * width)
        self.bottom = _double_conv(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _double_conv(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _double_conv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        b = self.bottom(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


PLAIN: dict[str, tuple[Callable[[], nn.Module], int, str]] = {
    "shufflenet": (ShuffleNet, 128, "plain torch: chunk, Concat, channel shuffle (Reshape → Transpose → Reshape)"),
    "unet": (UNet, 128, "plain torch: ConvTranspose decoder, skip Concat"),
}
MODELS = [*TIMM, *PLAIN]


# ------------------------------------------------------------------------------------------------ masking
def build(family: str) -> tuple[nn.Module, tuple[int, ...], list[nn.Module]]:
    """The model (seeded, trained-like BatchNorm), its input shape and the layers Torch-Pruning must not prune."""
    torch.manual_seed(0)
    if family in PLAIN:
        factory, size, _ = PLAIN[family]
        model = factory().eval()
    else:
        import timm

        name, size, _ = TIMM[family]
        kwargs = {"img_size": size} if family == "vit" else {}
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
    trained_like_batchnorm(model)
    if family in LAYERNORM_FAMILIES:  # only the MLP hidden neurons: the block channels pass a LayerNorm
        ignored = [m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                   and not n.endswith("mlp.fc1")]  # fmt: skip
    elif family == "unet":
        ignored = [model.head]  # type: ignore[list-item]
    else:
        ignored = [model.fc if family == "shufflenet" else model.get_classifier()]  # type: ignore[operator]
    return model, (1, 3, size, size), ignored


def bench(family: str, folder: Path, ratio: float, rounds: int, iterations: int) -> dict[str, object]:
    model, shape, ignored = build(family)
    masked, physical, tp_failure = prune_both_ways(model, shape, ignored, ratio)
    options = ExportOptions(input_shape=shape, rtol=1e-3, atol=1e-4)
    masked_file, lean_file, physical_file = (folder / f"{family}.{kind}.onnx" for kind in ("masked", "lean", "tp"))
    start = time.perf_counter()
    export_module(masked, masked_file, options)
    report = optimize_model(masked_file, lean_file, OptimizeOptions(align=1))
    seconds = time.perf_counter() - start
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    row: dict[str, object] = {
        "model": family,
        "timm": TIMM[family][0] if family in TIMM else None,
        "what": TIMM[family][2] if family in TIMM else PLAIN[family][2],
        "exact_max_rel_error": max(c.max_rel_error for c in report.checks),
        "params_masked": report.before.params,
        "params_lean": report.after.params,
        "params_zero": _zero_params(masked_file),
        "barriers": step.barriers,
        "rule_errors": step.rule_errors,
        "kept_dead": _kept_dead(step.groups),
        "export_optimize_s": seconds,
        "tp_failure": tp_failure,
        "layernorm_family": family in LAYERNORM_FAMILIES,
    }
    if physical is not None:
        export_module(physical, physical_file, options)

        params_tp = count_costs(load_model(physical_file)).params
        removed_tp = report.before.params - params_tp
        row["params_tp"] = params_tp
        row["removed_fraction"] = (report.before.params - report.after.params) / removed_tp if removed_tp else None
        compared = compare_models(
            [physical_file, lean_file], options=ProfileOptions(iterations=iterations, warmup=5, per_layer=False),
            rounds=rounds,
        )  # fmt: skip
        speedup = compared.variants[1].speedup  # physical p50 / lean p50
        row["lean_over_physical_p50"] = {"value": 1 / speedup.value, "low": 1 / speedup.high, "high": 1 / speedup.low}
        row["device"] = compared.device
    return row


def _zero_params(path: Path) -> int:
    """Weights that are exactly zero in the exported masked model (what masking left for removal)."""
    model = load_model(path)
    return sum(int((v.const_value.numpy() == 0).sum()) for v in model.graph.initializers.values()
               if v.const_value is not None and v.const_value.dtype.is_floating_point())  # fmt: skip


def _kept_dead(groups: list) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for group in groups:
        for reason, count in group.kept_dead.items():
            reasons[reason] = reasons.get(reason, 0) + count
    return reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(parser, MODELS, iterations=30)
    parser.add_argument("--ratio", type=float, default=0.4)
    args = parser.parse_args()
    load_tvshim(args.tvshim)
    console = Console(width=220)
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsecut-zoo-") as tmp:
        for family in track(args.models, description="models", console=console):
            results.append(bench(family, Path(tmp), args.ratio, args.rounds, args.iterations))
    table = Table(title=f"remove-dead-channels on models masked by Torch-Pruning (ratio {args.ratio:.1f})")
    for column in ("model", "what", "exact (max rel)", "params removed / zero", "removed / TP removed", "lean / TP physical p50 (95 %)",
                   "barriers", "rule errors", "dead kept (why)"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("model", "what", "dead kept (why)") else "right")
    for r in results:
        fraction = r.get("removed_fraction")
        ratio = r.get("lean_over_physical_p50")
        table.add_row(
            f"{r['model']}" + (f" ({r['timm']})" if r["timm"] else ""),
            str(r["what"]),
            f"{r['exact_max_rel_error']:.1e}",
            f"{(r['params_masked'] - r['params_lean']) / r['params_zero']:.1%}" if r["params_zero"] else "–",  # type: ignore[operator]
            f"{fraction:.1%}" if isinstance(fraction, float) else f"TP failed: {r['tp_failure']}",
            f"{ratio['value']:.3f} ({ratio['low']:.3f}–{ratio['high']:.3f})" if isinstance(ratio, dict) else "–",
            ", ".join(f"{k} ×{v}" for k, v in r["barriers"].items()) or "none",  # type: ignore[attr-defined]
            str(len(r["rule_errors"])),  # type: ignore[arg-type]
            "; ".join(f"{v} {k}" for k, v in r["kept_dead"].items())[:120] or "–",  # type: ignore[attr-defined]
        )
    console.print(table)
    cnn = [r for r in results if not r["layernorm_family"] and isinstance(r.get("removed_fraction"), float)]
    console.print(
        f"targets: exact on every model ({all(r['exact_max_rel_error'] <= 1e-4 for r in results)}); ≥ 90 % of "
        f"Torch-Pruning's removed weights on every CNN family without LayerNorm "
        f"({all(r['removed_fraction'] >= 0.9 for r in cnn)}, lowest {min((r['removed_fraction'] for r in cnn), default=float('nan')):.1%}); "
        f"no rule error ({not any(r['rule_errors'] for r in results)})"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
