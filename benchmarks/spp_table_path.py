"""The pyramid's table path (what runs on a GPU, or on a CPU without numba), called once per
map as the detector calls it: time and
number of operators dispatched (all, and those that compute rather than make a view), for a training mini-batch (forward + backward) and for one
photo's windows at test time. On a GPU every operator is at least one kernel launch, so the
count is what a GPU pays beyond the arithmetic; it is measured on any device.

    python benchmarks/spp_table_path.py [--device cuda] [--compare old_spp.py]

``--compare`` times another version of spp.py (e.g. ``git show REV:spp_det/models/spp.py``
with its relative import made absolute) on the same inputs. Writes
benchmarks/results/spp_table_path_<device>.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from machine import machine_info  # benchmarks/ is the script's own directory
from spp_det.models.spp import SpatialPyramidPooling

ROOT = Path(__file__).resolve().parents[1]
# operators that only make views or allocate: no kernel runs for them on a GPU
NO_KERNEL = {"as_strided", "as_strided_", "slice", "reshape", "view", "_unsafe_view", "_reshape_alias", "select",
             "permute", "expand", "unsqueeze", "squeeze", "detach", "alias", "t", "transpose", "unbind", "split",
             "empty", "empty_strided", "empty_like", "resize_", "lift_fresh", "result_type", "to"}


def windows(gen: torch.Generator, k: int, images: int, h: int, w: int) -> torch.Tensor:
    """(k, 5) [image, x1, y1, x2, y2] inclusive cells, sizes spread like proposals'."""
    x1 = torch.randint(0, w - 1, (k,), generator=gen)
    y1 = torch.randint(0, h - 1, (k,), generator=gen)
    x2 = torch.minimum(x1 + torch.randint(0, w, (k,), generator=gen), torch.tensor(w - 1))
    y2 = torch.minimum(y1 + torch.randint(0, h, (k,), generator=gen), torch.tensor(h - 1))
    return torch.stack([torch.randint(0, images, (k,), generator=gen), x1, y1, x2, y2], 1)


def pooled(spp: torch.nn.Module, maps: list[torch.Tensor], wins: list[torch.Tensor]) -> torch.Tensor:
    """One call per map, as SPPNet.pool_cells makes them: (1, C, H, W) and its windows."""
    return torch.cat([spp(m[None], w) for m, w in zip(maps, wins)])


def measure(spp: torch.nn.Module, maps: list[torch.Tensor], wins: list[torch.Tensor], grad: bool,
            repeats: int) -> dict:
    sync = torch.cuda.synchronize if maps[0].is_cuda else (lambda: None)

    def once():
        xs = [m.detach().requires_grad_(grad) for m in maps]
        with torch.set_grad_enabled(grad):
            out = pooled(spp, xs, wins)
            if grad:
                out.sum().backward()
        sync()
    once()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        once()
    ops = {e.key[6:]: e.count for e in prof.key_averages() if e.key.startswith("aten::")}
    return {"seconds": round(best, 4), "aten_ops": sum(ops.values()),
            "computing_ops": sum(n for k, n in ops.items() if k not in NO_KERNEL)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", type=Path, default=None)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    # the dilated Lite0 at 480 px: 1280 channels, 30 x 40 cells, stored channels first as the
    # conv-map cache gives them; training: 2 photos x 64 windows; test: one photo's 1,200
    maps = [torch.randn(1280, 30, 40, generator=gen) for _ in range(2)]
    cases = {"train_2x64_fwd_bwd": (maps, [windows(gen, 64, 1, 30, 40) for _ in maps], True),
             "test_1x1200": (maps[:1], [windows(gen, 1200, 1, 30, 40)], False)}
    # loop_below=0: the tables however few the windows, as on a GPU (a CPU loops below 64)
    versions = {"this": SpatialPyramidPooling((6, 3, 2, 1), use_kernel=False, loop_below=0)}
    if args.compare:
        spec = importlib.util.spec_from_file_location("spp_compare", args.compare)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        versions[str(args.compare)] = mod.SpatialPyramidPooling((6, 3, 2, 1), use_kernel=False)  # as it ran
    result = {"device": args.device, "machine": machine_info(), "cases": {}}
    for case, (maps, wins, grad) in cases.items():
        maps, wins = [m.to(args.device) for m in maps], [w.to(args.device) for w in wins]
        outs = {}
        for name, spp in versions.items():
            row = measure(spp, maps, wins, grad, args.repeats)
            outs[name] = pooled(spp, maps, wins)
            result["cases"].setdefault(case, {})[name] = row
            print(f"{case:>20} {name:>24}: {row['seconds']:.4f} s, {row['aten_ops']} aten ops, "
                  f"{row['computing_ops']} of them computing")
        ref = next(iter(outs.values()))
        assert all(torch.equal(ref, o) for o in outs.values()), "versions disagree"
    out = ROOT / "benchmarks" / "results" / f"spp_table_path_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
