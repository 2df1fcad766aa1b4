"""benchmarks/levers.py: which earlier run stands for a row (the runs take an hour each on
2 cores, so reusing the wrong one, or refusing the right one, costs a table row)."""
import importlib.util
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from spp_det.errors import SppDetError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("levers", ROOT / "benchmarks" / "levers.py")
levers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(levers)


def finished_run(out: Path, name: str, cfg) -> dict:
    run = out / name
    run.mkdir(parents=True)
    (run / "levers_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    metrics = {"mAP": 0.611, "AP": {"dog": 0.7}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_a_run_made_before_an_option_existed_is_its_row(tmp_path):
    name = "dilated_recipe_8k"
    overrides = levers.LEVERS[name][1]
    cfg = OmegaConf.to_container(levers.row_config(overrides))
    # made before train.ridge.memory_gb existed, by a run that did not resume
    del cfg["train"]["ridge"]["memory_gb"]
    cfg["resume"] = False
    metrics = finished_run(tmp_path, name, cfg)
    assert levers.run_row(name, overrides, tmp_path) == metrics


def test_a_run_made_with_another_setting_is_refused(tmp_path):
    name = "dilated_recipe_8k"
    overrides = levers.LEVERS[name][1]
    cfg = levers.row_config(overrides)
    cfg.solver.max_iter = 4000  # the 4k row's run left in the 8k row's directory
    finished_run(tmp_path, name, cfg)
    with pytest.raises(SppDetError, match="another configuration than row 'dilated_recipe_8k'"):
        levers.run_row(name, overrides, tmp_path)
    # a stopped run (no metrics.json yet) of another setting is refused too: resuming its
    # checkpoint would mix two trainings
    (tmp_path / name / "metrics.json").unlink()
    with pytest.raises(SppDetError, match="another configuration"):
        levers.run_row(name, overrides, tmp_path)


def test_a_row_setting_an_option_the_run_predates_is_refused(tmp_path):
    name = "dilated_recipe_8k"
    overrides = levers.LEVERS[name][1]
    cfg = OmegaConf.to_container(levers.row_config(overrides))
    del cfg["train"]["ridge"]["memory_gb"]  # the run predates the option (its behaviour: no bound)
    finished_run(tmp_path, name, cfg)
    with pytest.raises(SppDetError, match="another configuration"):
        levers.run_row(name, overrides + ["train.ridge.memory_gb=8"], tmp_path)


def test_a_checkpoint_without_its_configuration_is_not_resumed(tmp_path):
    (tmp_path / "dilated_recipe_8k" / "checkpoints").mkdir(parents=True)
    (tmp_path / "dilated_recipe_8k" / "checkpoints" / "last.pt").write_bytes(b"copied in")
    with pytest.raises(SppDetError, match="checkpoint without the configuration"):
        levers.run_row("dilated_recipe_8k", levers.LEVERS["dilated_recipe_8k"][1], tmp_path)


def test_known_keys_drops_only_what_the_old_run_lacks_at_its_default():
    default = {"train": {"ridge": {"lam": 4000, "memory_gb": 4}, "flip": False}, "seed": 0, "x": 2}
    now = {"train": {"ridge": {"lam": 4000, "memory_gb": 4}, "flip": True}, "seed": 0}
    before = {"train": {"ridge": {"lam": 4000}, "flip": True}, "seed": 0}
    assert levers.known_keys(now, before, default) == before
    assert levers.known_keys({"seed": 1, "x": 2}, {"seed": 0}, default) == {"seed": 1}
    # not at its default, or an option without one: kept, so the configurations differ
    assert levers.known_keys({"seed": 1, "x": 3}, {"seed": 0}, default) == {"seed": 1, "x": 3}
    assert levers.known_keys({"seed": 1, "y": 0}, {"seed": 0}, default) == {"seed": 1, "y": 0}


def test_a_stage_row_starts_from_its_base_rows_model_without_training_it_again(tmp_path, monkeypatch):
    name = "dilated_recipe_svm_c35e4"
    what, base, own = levers.STAGE_ROWS[name]
    base_overrides = levers.LEVERS[base][1]
    finished_run(tmp_path, base, OmegaConf.to_container(levers.row_config(base_overrides)))
    (tmp_path / base / "checkpoints").mkdir()
    for f, data in (("best.pt", b"best weights"), ("last.pt", b"last state")):
        (tmp_path / base / "checkpoints" / f).write_bytes(data)
    calls = []

    def fake_train_job(cfg, run):
        # what train_job resumes from is already in place when it starts
        calls.append((cfg, (run / "checkpoints" / "best.pt").read_bytes(), (run / "checkpoints" / "last.pt").read_bytes()))
        (run / "metrics.json").write_text(json.dumps({"mAP": 0.6, "AP": {}}))

    monkeypatch.setattr(levers, "train_job", fake_train_job)
    assert levers.stage_row_overrides(name) == base_overrides + own
    assert levers.run_row(name, levers.stage_row_overrides(name), tmp_path, start_from=base) == {"mAP": 0.6, "AP": {}}
    [(cfg, best, last)] = calls  # the base row, finished, is not trained again
    assert (best, last) == (b"best weights", b"last state")
    assert (cfg.train.classifier, cfg.train.svm.C, cfg.solver.max_iter, cfg.resume) == ("svm", 0.0035, 4000, "auto")
    # the base row's fine-tuning settings, unchanged
    base_cfg = levers.row_config(base_overrides)
    assert (cfg.model, cfg.solver) == (base_cfg.model, base_cfg.solver)
    assert {k: v for k, v in cfg.train.items() if k not in ("classifier", "svm")} == \
        {k: v for k, v in base_cfg.train.items() if k not in ("classifier", "svm")}


def test_a_stage_row_trains_its_unfinished_base_row_first(tmp_path, monkeypatch):
    name = "dilated_recipe_svm_c1e3"
    _, base, _ = levers.STAGE_ROWS[name]
    order = []

    def fake_train_job(cfg, run):
        order.append((run.name, cfg.train.classifier))
        if run.name == base:  # the base row's fine-tuning writes its checkpoints
            (run / "checkpoints").mkdir()
            for f in ("best.pt", "last.pt"):
                (run / "checkpoints" / f).write_bytes(f.encode())
        else:
            assert (run / "checkpoints" / "last.pt").read_bytes() == b"last.pt"
        (run / "metrics.json").write_text(json.dumps({"mAP": 0.5, "AP": {}}))

    monkeypatch.setattr(levers, "train_job", fake_train_job)
    levers.run_row(name, levers.stage_row_overrides(name), tmp_path, start_from=base)
    assert order == [(base, "softmax"), (name, "svm")]


def test_a_stage_row_whose_base_run_lost_its_checkpoints_is_one_clear_error(tmp_path):
    name = "dilated_recipe_svm_c35e4"
    _, base, _ = levers.STAGE_ROWS[name]
    finished_run(tmp_path, base, OmegaConf.to_container(levers.row_config(levers.LEVERS[base][1])))
    with pytest.raises(SppDetError, match=f"{base}: row '{name}' starts from this run's checkpoints, but it has no "
                                          "best.pt or last.pt"):
        levers.run_row(name, levers.stage_row_overrides(name), tmp_path, start_from=base)


def test_an_init_row_trains_its_base_row_first_and_starts_from_its_best_pt(tmp_path, monkeypatch):
    name = "dilated_recipe_tail2k"
    _, base, own = levers.INIT_ROWS[name]
    order = []

    def fake_train_job(cfg, run):
        order.append((run.name, cfg.train.finetune_conv, cfg.train.get("init_weights")))
        (run / "metrics.json").write_text(json.dumps({"mAP": 0.5, "AP": {}}))

    monkeypatch.setattr(levers, "train_job", fake_train_job)
    overrides = levers.init_row_overrides(name, tmp_path)
    assert overrides[:-1] == levers.LEVERS[base][1] + own
    levers.run_row(name, overrides, tmp_path, init_from=base)
    best = str(tmp_path / base / "checkpoints" / "best.pt")
    assert order == [(base, False, None), (name, True, best)]
    levers.run_row(name, overrides, tmp_path, init_from=base)  # both finished: nothing trains again
    assert len(order) == 2
    cfg = levers.row_config(overrides)
    assert (cfg.model.trunk.trainable_layers, cfg.train.images_per_batch, cfg.train.pooled_batches) == (4, 2, False)
