"""kpnb.errors: one error family for input problems, parameters carried as a field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from kpnb.cli import cli_message
from kpnb.errors import KpnbError
from kpnb.images import ImageError

KPNB = Path(__file__).resolve().parents[1] / "kpnb"

#: Bare ValueError/TypeError constructions allowed in kpnb, each with its reason.
ALLOWED: dict[str, str] = {}

_BARE = re.compile(r"(?<![\w.])(ValueError|TypeError)\(")


def test_input_errors_are_kpnb_errors_not_bare_value_or_type_errors():
    found = []
    for path in sorted(KPNB.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _BARE.search(code) and not code.lstrip().startswith("except"):
                where = f"{path.relative_to(KPNB.parent)}:{number}"
                if path.relative_to(KPNB.parent).as_posix() not in ALLOWED:
                    found.append(f"{where}: {line.strip()}")
    assert not found, "raise KpnbError (kpnb.errors) for input problems:\n" + "\n".join(found)


def test_the_scan_sees_a_bare_error(tmp_path):
    assert _BARE.search('raise ValueError("x")') and _BARE.search("return TypeError(msg)")
    assert not _BARE.search("raise KpnbError(msg)") and not _BARE.search("argparse.TypeError(")


def test_parameters_are_a_field_spelled_by_each_front_end():
    message = "{label} is not a skeleton; fix {image_root}"
    exc = KpnbError(message, param="image_root", params={"label": "'hand'"})
    assert exc.param == "image_root" and set(exc.params) == {"image_root", "label"}
    assert str(exc) == "label='hand' is not a skeleton; fix image_root"
    assert cli_message(exc) == "--label 'hand' is not a skeleton; fix --images-root"


def test_a_parameter_the_message_does_not_place_is_added_as_its_flag():
    exc = KpnbError("no images found", param="skip_missing")
    assert str(exc) == "no images found"
    assert cli_message(exc).endswith("(on the command line: --skip-missing)")


def test_braces_that_name_no_parameter_stay_as_written():
    exc = KpnbError("{x} and {label}", params={"label": 1})
    assert str(exc) == "{x} and label=1" and cli_message(exc) == "{x} and --label 1"
    assert str(KpnbError("{not a field}")) == "{not a field}"
    with pytest.raises(ValueError):  # still a ValueError for callers that catch one
        raise KpnbError("x")


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise ImageError("img_1.png: cannot decode the image (truncated)")


def test_an_error_in_a_loader_worker_reaches_the_user_as_its_own_one_line():
    loader = torch.utils.data.DataLoader(_Unreadable(), num_workers=1)
    with pytest.raises(ImageError) as exc:
        next(iter(loader))
    assert str(exc.value) == "img_1.png: cannot decode the image (truncated)"


def test_every_flag_errors_can_name_is_a_real_flag():
    from kpnb.cli import FLAGS, get_args_parser

    parser = get_args_parser()
    commands = parser._subparsers._group_actions[0].choices.values()
    options = {o for cmd in commands for a in cmd._actions for o in a.option_strings}
    assert set(FLAGS.values()) <= options, set(FLAGS.values()) - options


def test_a_resume_conflict_names_the_flag_on_the_command_line():
    exc = KpnbError("cannot resume with {seed}: the run has seed=0", params={"seed": "3"})
    assert str(exc).startswith("cannot resume with seed=3")
    assert cli_message(exc).startswith("cannot resume with --seed 3")
