import subprocess
import sys

from kpnb.cli import main


def test_help_lists_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "synth" in out


def test_each_subcommand_help_has_an_example(capsys):
    from kpnb.cli import _COMMANDS

    for name in _COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as e:
            assert e.code == 0
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
    code = main(["convert", str(synthetic_export), str(tmp_path / "kp.json"), "--to", "coco",
                 "--points-as-skeleton", "x"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no plain one-point <points> labels" in err and "Traceback" not in err
    assert not (tmp_path / "kp.json").exists()
