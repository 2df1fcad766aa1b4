"""Training iterations per second, measured from the run record (not part of pytest).

    python benchmarks/train_speed.py --name shapes --iters 300
    python benchmarks/train_speed.py --name shapes_cuda --iters 100 --profile -- device=cuda
    python benchmarks/train_speed.py --name coco128_lite0 --iters 200 -- dataset=coco128 \
        model=efficientnet_lite0 proposals=ss_fast train=paper solver=frozen_short \
        'model.scales=[576]' 'model.train_scales=[480,576,688]' model.hidden=1024

Runs ``Trainer.fit`` for ``--iters`` iterations with the given overrides (the default
config otherwise) and reports iterations/s between the first logged step and the last, so
set-up (proposals, the conv-map pass, worker start-up) is not counted. Run it twice for a
warm cache. Writes ``benchmarks/results/train_speed_<name>.json``; with ``--profile`` also
``train_speed_<name>_profile.txt``: torch.profiler's operators by self time (CPU, and CUDA
on a GPU) over ten iterations in the middle of the run, to see where an iteration goes.
``step_s_median`` is the time an iteration spends in ``Trainer.step``; the rest of
``1 / iterations_per_s`` is the loader's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--profile", action="store_true", help="torch.profiler over the run (slows it)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    try:
        from spp_det.training.trainer import Trainer
    except ImportError:  # the layout before the engine was split, for before/after numbers
        from spp_det.engine.trainer import Trainer

    overrides = [f"solver.max_iter={args.iters}", f"train.log_every={args.log_every}", "test_at_end=false",
                 f"train.val_every={10 ** 9}", f"train.checkpoint_every={10 ** 9}", *args.overrides]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(out))
        import torch
        cuda = torch.cuda.is_available() and str(cfg.device).startswith("cuda")
        step, step_s, tables = trainer.step, [], []

        def timed_step(net, batch):
            """Trainer.step (forward, loss, backward, update, maps copied to the device), timed: the
            rest of an iteration is the loader's (map reading, window drawing, batch assembly)."""
            t = time.perf_counter()
            result = step(net, batch)
            if cuda:
                torch.cuda.synchronize()
            step_s.append(time.perf_counter() - t)
            if args.profile:
                prof.step()
            return result

        trainer.step = timed_step
        if args.profile:
            from torch.profiler import ProfilerActivity, profile, schedule
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            # a window of iterations after a warm-up, not the whole run: over the conv-map
            # pass and every iteration the table did not finish inside a GPU lease (twice)
            window = schedule(wait=max(0, args.iters // 2 - 12), warmup=2, active=10, repeat=1)
            with profile(activities=activities, schedule=window) as prof:
                trainer.fit()
            tables = [prof.key_averages().table(sort_by=key, row_limit=25)
                      for key in ["self_cpu_time_total"] + (["self_cuda_time_total"] if cuda else [])]
        else:
            trainer.fit()
        wall = time.perf_counter() - t0
    steps = [h for h in trainer.history if "loss" in h]
    first, last = steps[0], steps[-1]
    rate = (last["iteration"] - first["iteration"]) / (last["seconds"] - first["seconds"])
    result = {"name": args.name, "overrides": args.overrides, "iterations": args.iters,
              "iterations_per_s": round(rate, 3), "wall_s": round(wall, 1), "cpu_count": os.cpu_count(),
              # the median iteration's time inside Trainer.step; 1 / iterations_per_s minus this
              # is what the loader adds (the step waits for the GPU to finish)
              "step_s_median": round(sorted(step_s)[len(step_s) // 2], 4),
              "loader_workers": cfg.train.get("loader_workers", 0),
              "machine": platform.processor() or platform.machine()}
    print(json.dumps(result, indent=1))
    path = ROOT / "benchmarks" / "results" / f"train_speed_{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    if args.profile:
        text = "\n\n".join(tables)
        print(text)
        path.with_name(f"train_speed_{args.name}_profile.txt").write_text(text)


if __name__ == "__main__":
    main()
