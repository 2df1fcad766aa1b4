"""benchmarks/inference_options.py: its rows are what eval.py gives with the same options
(it scores each photo once and post-processes per row, so a slip there would put wrong
numbers in the README's table)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("inference_options", ROOT / "benchmarks" / "inference_options.py")
inference_options = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference_options)


def test_rows_equal_eval_runs_with_the_same_options(tmp_path, tiny_checkpoint):
    from hydra import compose, initialize_config_dir

    from spp_det.jobs.eval import evaluate_checkpoint
    rows = inference_options.main(["--name", "t", "--checkpoint", str(tiny_checkpoint), "--subset", "4", "--flip",
                                   "--nms", "0.3", "0.5", "--vote", "0.5", "--out", str(tmp_path / "bench")])
    assert [(r["flip"], r["nms_thresh"], r["box_vote"]) for r in rows] == [
        (False, 0.3, None), (False, 0.3, 0.5), (False, 0.5, None), (False, 0.5, 0.5),
        (True, 0.3, None), (True, 0.3, 0.5), (True, 0.5, None), (True, 0.5, 0.5)]
    assert (tmp_path / "bench" / "inference_options_t.md").is_file()
    for flip, nms, vote in [(False, 0.3, None), (True, 0.5, 0.5)]:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("eval", overrides=[f"checkpoint={tiny_checkpoint}", "subset=[0,4]", "plot=false",
                                             f"test.flip={flip}", f"test.nms_thresh={nms}",
                                             f"test.box_vote={'null' if vote is None else vote}"])
        metrics = evaluate_checkpoint(cfg, tmp_path / f"eval_{flip}_{nms}")
        row = next(r for r in rows if (r["flip"], r["nms_thresh"], r["box_vote"]) == (flip, nms, vote))
        assert row["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9) and row["AP"] == pytest.approx(metrics["AP"])
    assert len({round(r["mAP"], 6) for r in rows}) > 1  # the options change the number
