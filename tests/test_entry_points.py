"""The commands installed from a wheel, run outside the repository."""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import ROOT


def test_wheel_installs_commands_that_run_outside_the_repository(tmp_path, shapes_root, tiny_checkpoint):
    """Build the wheel, install it (no dependencies: this environment's are reused through
    a .pth, the package itself only from the wheel) into a fresh virtualenv, then run
    spp-detect from a folder outside the repository: its configs come from the package."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("spp_det-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, OpenCV, ...) of this environment; the editable install of
    # the repository is not seen there (a .pth's own .pth files are not read)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)

    away = tmp_path / "elsewhere"
    away.mkdir()
    where = subprocess.run([str(python), "-c", "import spp_det; print(spp_det.__file__)"], cwd=away,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(site))  # the wheel's copy, not the repository
    for name in ("spp-train", "spp-eval", "spp-detect", "spp-propose"):
        helped = subprocess.run([str(venv / "bin" / name), "--help"], cwd=away, capture_output=True, text=True,
                                timeout=120)
        assert helped.returncode == 0 and f"{name.split('-')[1]} is powered by Hydra" in helped.stdout, helped.stderr

    image = away / "photo.jpg"
    shutil.copy(shapes_root / "SHAPES" / "JPEGImages" / "000009.jpg", image)
    done = subprocess.run([str(venv / "bin" / "spp-detect"), f"checkpoint={tiny_checkpoint}", f"input={image}",
                           "output=out", "test.score_thresh=0.0", "test.max_per_image=4", "loader_workers=0",
                           "++proposals.cache_dir=props", "++proposals.mode=fast", "++proposals.max_size=200",
                           "++proposals.min_size=4", "++proposals.max_boxes=100", "hydra.run.dir=run"],
                          cwd=away, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = json.loads((away / "out" / "detections.json").read_text())
    assert len(written) == 4 and {d["image_id"] for d in written} == {"photo.jpg"}
    assert (away / "out" / "photo.jpg").is_file() and (away / "run" / "detect.log").is_file()
