"""Checkpoints: self-describing, checked against the model they rebuild; resume rules."""
import pytest
import torch

from spp_det.models.checkpoint import check_fits, load_checkpoint, model_from_checkpoint, resume_path, save_checkpoint
from spp_det.errors import SppDetError


def test_normalisation_recorded_in_the_checkpoint_is_checked(tmp_path, tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt["trunk"] == "zf5" and ckpt["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    model = model_from_checkpoint(ckpt)
    assert torch.equal(model.trunk.mean.flatten(), torch.tensor([0.5] * 3))
    ckpt["normalization"]["mean"] = [0.485, 0.456, 0.406]  # what the code would build after a change
    save_checkpoint(tmp_path / "odd.pt", {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(SppDetError, match=r"odd.pt: trained with normalization \{'mean': \[0.485"
                                          r".*does not fit this version of the code"):
        model_from_checkpoint(load_checkpoint(tmp_path / "odd.pt"), path=tmp_path / "odd.pt")


def test_check_fits_names_the_file_and_both_values_and_a_key_not_recorded():
    ckpt = {"classes": ["cat", "dog"], "trunk": "zf5"}
    check_fits(ckpt, "a.pt", "this run has", classes=["cat", "dog"], trunk="zf5")
    with pytest.raises(SppDetError, match=r"^a.pt: trained with classes \['cat', 'dog'\], but this run has "
                                          r"\['dog', 'cat'\]: this checkpoint does not fit \(hint\)$"):
        check_fits(ckpt, "a.pt", "this run has", hint=" (hint)", classes=["dog", "cat"], trunk="zf5")
    with pytest.raises(SppDetError, match=r"trained with trunk zf5, but .* efficientnet_lite0"):
        check_fits(ckpt, "a.pt", "this run has", classes=["cat", "dog"], trunk="efficientnet_lite0")
    # a key the file does not record: an error, unless optional (files from before the key)
    with pytest.raises(SppDetError, match=r"^a.pt: the checkpoint does not record its normalization"):
        check_fits(ckpt, "a.pt", "this run has", normalization={"mean": [0.5]})
    check_fits(ckpt, "a.pt", "this run has", optional=("normalization",), normalization={"mean": [0.5]})


def test_resume_path_rules(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    assert resume_path(False, ckpt_dir) is None and resume_path("auto", ckpt_dir) is None
    with pytest.raises(SppDetError) as err:
        resume_path(True, ckpt_dir)
    assert str(err.value).startswith(f"resume=true: {ckpt_dir / 'last.pt'} does not exist (no checkpoint in this "
                                     f"run directory; pass hydra.run.dir=")
    ckpt_dir.mkdir()
    (ckpt_dir / "last.pt").write_bytes(b"x")
    assert resume_path(True, ckpt_dir) == resume_path("auto", ckpt_dir) == ckpt_dir / "last.pt"
    assert resume_path(str(tmp_path / "other.pt"), ckpt_dir) == tmp_path / "other.pt"


def test_resuming_a_checkpoint_without_per_rank_state_is_a_clear_error(tmp_path, shapes_root, tiny_checkpoint):
    from spp_det.training.trainer import Trainer
    old = {k: v for k, v in load_checkpoint(tiny_checkpoint).items() if k not in ("format", "rng", "draws")}
    save_checkpoint(tmp_path / "old.pt", old)
    cfg = _resume_cfg(shapes_root)
    with pytest.raises(SppDetError, match=r"old.pt: written by an older version of spp_det"):
        Trainer(cfg, tmp_path / "run").resume(tmp_path / "old.pt")


def test_resuming_a_checkpoint_with_one_optimizer_group_is_a_clear_error(tmp_path, shapes_root, tiny_checkpoint):
    """last.pt files written before biases got their own parameter group (train=released's
    bias rules) hold one group: a clear error, not torch's ValueError."""
    from spp_det.training.trainer import Trainer
    old = load_checkpoint(tiny_checkpoint.parent / "last.pt")
    old = {k: v for k, v in old.items() if k != "format"}
    groups = old["optimizer"]["param_groups"]
    assert len(groups) == 2
    old["optimizer"]["param_groups"] = [{**groups[0], "params": groups[0]["params"] + groups[1]["params"]}]
    save_checkpoint(tmp_path / "old.pt", old)
    cfg = _resume_cfg(shapes_root)
    with pytest.raises(SppDetError, match=r"old.pt: written by an older version of spp_det \(its optimizer has 1 "):
        Trainer(cfg, tmp_path / "run").resume(tmp_path / "old.pt")


def _resume_cfg(shapes_root):
    """The tiny training config the resume tests build a Trainer from."""
    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["model=zf5_small", "train=shapes_e2e", "solver=shapes_e2e",
                                          f"dataset.root={shapes_root}", "dataset.generate.num_trainval=8",
                                          "dataset.generate.num_test=6", "model.hidden=32", "train.val_fraction=0"])
    return cfg
