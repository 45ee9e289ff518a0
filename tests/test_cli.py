import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from kpnb import cli
from kpnb.cli import main
from kpnb.errors import KpnbError


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "synth" in out


def test_each_subcommand_help_has_an_example(capsys):
    from kpnb.cli import _COMMANDS

    for name in _COMMANDS:
        assert main([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert "example:" in out and f"kpnb {name}" in out, name


def test_synth_via_python_m(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.run(
        [sys.executable, "-m", "kpnb", "synth", "--out", str(out), "--images", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 3 images" in proc.stdout
    assert (out / "annotations.xml").is_file()


def test_bad_input_is_one_line_not_a_traceback(tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path / "x"), "--images", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "argument --images: must be a whole number >= 0, got -1" in err


def test_info_and_convert(tmp_path, synthetic_export, capsys):
    assert main(["info", str(synthetic_export)]) == 0
    out = capsys.readouterr().out
    assert "images: 40" in out and "flip pairs: left_eye<->right_eye" in out
    for fmt, target in [("coco", "kp.json"), ("cvat", "a.xml"), ("csv", "tables")]:
        assert main(["convert", str(synthetic_export), str(tmp_path / target), "--to", fmt]) == 0
    assert main(["info", str(tmp_path / "kp.json")]) == 0
    assert "images: 40" in capsys.readouterr().out


def test_convert_errors_are_one_line(tmp_path, synthetic_export, capsys):
    # a skeleton export has no one-point labels to combine: one line, naming the flag
    code = main(
        [
            "convert",
            str(synthetic_export),
            str(tmp_path / "kp.json"),
            "--to",
            "coco",
            "--points-as-skeleton",
            "x",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no plain one-point <points> labels" in err and "Traceback" not in err
    assert not (tmp_path / "kp.json").exists()


@pytest.mark.slow
def test_the_wheel_works_without_the_checkout(tmp_path):
    """Build the wheel, install it into a fresh venv that sees the project venv's other
    packages but not this checkout, and use it from outside the repository: synth, info,
    and notebook 00 (an editable install would hide files missing from the wheel)."""
    import os
    import site
    import sysconfig
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(repo),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    wheel = next(dist.glob("kpnb-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    package = {
        p.relative_to(repo).as_posix()
        for p in (repo / "kpnb").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert package <= shipped, package - shipped
    assert any(n.endswith("licenses/LICENSE") for n in shipped)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the project venv's packages, listed in a .pth: its editable kpnb .pth is not processed
    theirs = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "project-venv.pth").write_text("\n".join(dict.fromkeys(theirs)) + "\n")
    subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {
        **env,
        "KPNB_SMOKE": "1",
        "KPNB_CACHE": str(tmp_path / "cache"),
        "KPNB_OUTPUTS": str(tmp_path / "outputs"),
        "PATH": f"{venv / 'bin'}:{env['PATH']}",
    }

    def run(*args):
        return subprocess.run(
            args, capture_output=True, text=True, check=True, env=env, cwd=work
        ).stdout

    where = run(str(py), "-c", "import kpnb; print(kpnb.__file__)")
    assert where.startswith(str(purelib)), where
    assert "wrote 3 images" in run(
        str(venv / "bin" / "kpnb"), "synth", "--out", "d", "--images", "3"
    )
    assert "images: 3" in run(str(venv / "bin" / "kpnb"), "info", "d")
    notebook = work / "00_setup.ipynb"
    notebook.write_bytes((repo / "notebooks" / "00_setup.ipynb").read_bytes())
    run(str(py), "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace", str(notebook))
    cells = json.loads(notebook.read_text())["cells"]
    assert not [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert all(c["execution_count"] for c in cells if c["cell_type"] == "code" and c["source"])


def _failing(exc):
    def run(args):
        raise exc

    return run


def test_only_input_errors_become_one_line(monkeypatch, capsys):
    """kpnb's own errors print one line; a torch failure (CUDA out of memory) is not hidden."""
    info = cli._COMMANDS["info"]
    monkeypatch.setitem(cli._COMMANDS, "info", replace(info, run=_failing(KpnbError("fix it"))))
    assert main(["info", "x"]) == 2
    assert capsys.readouterr().err.strip() == "kpnb info: error: fix it"
    oom = replace(info, run=_failing(RuntimeError("CUDA out of memory")))
    monkeypatch.setitem(cli._COMMANDS, "info", oom)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        main(["info", "x"])


# -- outputs of predict and train ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny-preset checkpoint: enough for predict's plumbing."""
    import torch

    from kpnb.checkpoint import Checkpoint
    from kpnb.model import build_model
    from kpnb.skeleton import Skeleton

    torch.manual_seed(0)
    model = build_model(3, weights=None, preset="tiny", size=64)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    skeleton = Skeleton(("a", "b", "c"), ((0, 1),))
    return Checkpoint.of_model(model, skeleton, label="thing").save(path)


@pytest.fixture
def same_stem_images(tmp_path, synthetic_export):
    """Two different images both named x.jpg, in folders a/ and b/."""
    import shutil

    sources = sorted((synthetic_export / "images").rglob("*.jpg"))[:2]
    images = []
    for folder, source in zip("ab", sources, strict=True):
        (tmp_path / folder).mkdir()
        images.append(Path(shutil.copy(source, tmp_path / folder / "x.jpg")))
    return images


def _predict(ckpt, images, out, *extra):
    argv = ["predict", str(ckpt), *map(str, images), "--out", str(out), "--workers", "0"]
    return main([*argv, *extra])


def test_predict_viz_names_are_unique_and_existing_outputs_are_kept(
    tiny_checkpoint, same_stem_images, tmp_path, capsys
):
    viz, out = tmp_path / "viz", tmp_path / "preds.json"
    assert _predict(tiny_checkpoint, same_stem_images, out, "--viz", str(viz)) == 0
    assert sorted(p.name for p in viz.iterdir()) == ["0000_x.png", "0001_x.png"]
    first, second = (Image.open(viz / n).convert("RGB") for n in ("0000_x.png", "0001_x.png"))
    assert first.tobytes() != second.tobytes()  # each image drew its own picture
    stamp = out.read_bytes()
    (viz / "mine.txt").write_text("my notes")
    assert _predict(tiny_checkpoint, same_stem_images, out, "--viz", str(viz)) == 2
    assert f"{out}: the file exists" in capsys.readouterr().err and out.read_bytes() == stamp
    out.unlink()
    assert _predict(tiny_checkpoint, same_stem_images, out, "--viz", str(viz)) == 2
    assert f"{viz}: the folder is not empty" in capsys.readouterr().err and not out.exists()
    args = ("--viz", str(viz), "--overwrite")
    assert _predict(tiny_checkpoint, same_stem_images[::-1], out, *args) == 0
    assert sorted(p.name for p in viz.iterdir()) == ["0000_x.png", "0001_x.png", "mine.txt"]
    assert (viz / "mine.txt").read_text() == "my notes"
    assert Image.open(viz / "0000_x.png").convert("RGB").tobytes() == second.tobytes()
    assert isinstance(json.loads(out.read_text()), list)


def test_predict_viz_failure_leaves_the_folder_as_it_was(
    tiny_checkpoint, same_stem_images, tmp_path, monkeypatch
):
    import kpnb.viz

    viz = tmp_path / "viz"
    viz.mkdir()
    (viz / "0000_x.png").write_bytes(b"my picture")
    real, drawn = kpnb.viz.draw_instances, []

    def fails_on_the_second(*args, **kwargs):
        if drawn:
            raise OSError("disk full")
        drawn.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kpnb.viz, "draw_instances", fails_on_the_second)
    with pytest.raises(OSError, match="disk full"):
        _predict(
            tiny_checkpoint, same_stem_images, tmp_path / "p.json", "--viz", str(viz), "--overwrite"
        )
    assert drawn and [p.name for p in viz.iterdir()] == ["0000_x.png"]
    assert (viz / "0000_x.png").read_bytes() == b"my picture"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_train_passes_overwrite_and_resume_to_fit(points_export, tmp_path, monkeypatch, capsys):
    import kpnb.train

    calls = []

    def fake_fit(*args, out_dir=None, resume=None, overwrite=False, **kwargs):
        kpnb.train.check_run_folder(out_dir, overwrite=overwrite, resume=resume)
        calls.append((resume, overwrite))
        return []

    monkeypatch.setattr(kpnb.train, "fit", fake_fit)
    run = tmp_path / "run"
    run.mkdir()
    last = _a_runs_last_pth(run / "last.pth", str(points_export))
    argv = ["train", str(points_export), "--points-as-skeleton", "face", "--out", str(run)]
    argv += ["--weights", "none", "--preset", "tiny", "--size", "64", "--workers", "0"]
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err and not calls
    assert main([*argv, "--overwrite"]) == 0 and calls[-1] == (None, True)
    assert main([*argv, "--resume"]) == 0 and calls[-1] == (run / "last.pth", False)
    assert (run / "last.pth").read_bytes() == last


def _a_runs_last_pth(path, export: str) -> bytes:
    """The bytes of a last.pth of a tiny run at 64 px on the points export."""
    import torch

    from kpnb.checkpoint import Checkpoint, RunData, TrainConfig, rng_state
    from kpnb.model import build_model
    from kpnb.skeleton import Skeleton
    from kpnb.train import OneCycle

    model = build_model(5, weights=None, preset="tiny", size=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    skeleton = Skeleton(("nose", "left_eye", "right_eye", "left_ear", "right_ear"))
    ckpt = Checkpoint.of_model(model, skeleton, "face", TrainConfig(size=64, lr=1e-4))
    ckpt.data = RunData(export, "face", 0, [], [])
    ckpt.resume = {
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": OneCycle(optimizer, 1e-4, 10).state_dict(),
        "scaler": None,
        "rng": rng_state(None),
    }
    return ckpt.save(path).read_bytes()


def test_predict_takes_folders_of_images_in_name_order(
    tiny_checkpoint, same_stem_images, tmp_path, capsys
):
    (tmp_path / "a" / "notes.txt").write_text("not an image")  # no image extension: left out
    by_files, by_folders = tmp_path / "by_files", tmp_path / "by_folders"
    files = same_stem_images[::-1]  # b/x.jpg, then a/x.jpg
    assert _predict(tiny_checkpoint, files, tmp_path / "f.json", "--viz", str(by_files)) == 0
    folders = [tmp_path / "b", tmp_path / "a"]
    assert _predict(tiny_checkpoint, folders, tmp_path / "d.json", "--viz", str(by_folders)) == 0
    names = sorted(p.name for p in by_folders.iterdir())
    assert names == ["0000_x.png", "0001_x.png"]  # the two images, not the text file
    for name in names:  # the same images in the same order as the files given one by one
        assert (by_folders / name).read_bytes() == (by_files / name).read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _predict(tiny_checkpoint, [empty], tmp_path / "e.json") == 2
    assert f"{empty}: a folder with no image files" in capsys.readouterr().err


def test_predict_never_draws_over_its_input_images(
    tiny_checkpoint, same_stem_images, tmp_path, capsys
):
    photos = same_stem_images[0].parent  # a/x.jpg: drawing into a/ could replace it
    before = same_stem_images[0].read_bytes()
    args = ("--viz", str(photos), "--overwrite")
    assert _predict(tiny_checkpoint, same_stem_images, tmp_path / "p.json", *args) == 2
    err = capsys.readouterr().err
    assert f"--viz {photos}" in err and str(same_stem_images[0]) in err
    assert same_stem_images[0].read_bytes() == before and sorted(photos.iterdir()) == [
        same_stem_images[0]
    ]
