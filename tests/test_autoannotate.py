"""The CVAT auto-annotation function, against cvat-sdk's and cvat-cli's own classes.

No CVAT server runs here: what the driver does with a task (labels from the server, frames
downloaded, shapes uploaded) is replaced by the same SDK objects built locally; the mapping
and checks are the SDK's own (`_AnnotationMapper`, the code `annotate_task` and the agent
run on every function and every image).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cvat_sdk.auto_annotation as cvataa
import cvat_sdk.models as models
import numpy as np
import pytest
import torch
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from PIL import Image
from torch.utils.data import DataLoader, Subset

from kpnb import autoannotate
from kpnb.cvat import read_cvat
from kpnb.errors import KpnbError
from kpnb.evaluate import predict

SIZE = 64
LOG = __import__("logging").getLogger("test_autoannotate")


@pytest.fixture(scope="session")
def trained(synthetic_export, tmp_path_factory):
    """A tiny-preset model fitted for one short epoch on 6 synthetic images: its best.pth,
    the export's annotations and 4 images it did not train on."""
    from kpnb.dataset import KeypointDataset, collate_fn
    from kpnb.model import build_model
    from kpnb.train import TrainConfig, fit
    from kpnb.transforms import eval_transforms

    ann = read_cvat(synthetic_export)
    ds = KeypointDataset(ann, synthetic_export, "face", eval_transforms(SIZE))
    train = DataLoader(Subset(ds, range(6)), batch_size=2, collate_fn=collate_fn)
    val = DataLoader(Subset(ds, range(6, 8)), batch_size=2, collate_fn=collate_fn)
    torch.manual_seed(0)
    model = build_model(5, weights=None, size=SIZE, preset="tiny")
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(epochs=1, size=SIZE)  # fit records the loader's label, "face"
    fit(model, train, val, ann.skeletons["face"], config, out_dir=out)
    images = [ds.items[i].path for i in range(20, 24)]
    return out / "best.pth", ann, images


def _task_labels(ann) -> list:
    """The task's labels as CVAT's API returns them (`Task.get_labels`), made from the
    export's ``<labels>``: one top-level ``Label`` per label without a parent, each
    skeleton holding its ``points`` sublabels (server-assigned ids, no attributes), built
    as the API client deserialises a server's answer (``_from_openapi_data``)."""
    rows = ann.labels.to_dict(orient="records")
    ids = iter(range(100, 1000))
    out = []
    for row in rows:
        if isinstance(row.get("parent"), str) and row["parent"]:
            continue
        subs = [
            models.Sublabel._from_openapi_data(
                name=s["name"], id=next(ids), type=s["type"], attributes=[], has_parent=True
            )
            for s in rows
            if s.get("parent") == row["name"]
        ]
        kwargs = {"sublabels": subs} if subs else {}
        if isinstance(row.get("svg"), str) and row["svg"]:
            kwargs["svg"] = row["svg"]
        out.append(
            models.Label._from_openapi_data(
                name=row["name"],
                id=next(ids),
                type=row["type"],
                attributes=[],
                has_parent=False,
                **kwargs,
            )
        )
    return out


def _mapper(function, ds_labels):
    return _AnnotationMapper(
        LOG,
        function.spec.labels,
        ds_labels,
        allow_unmatched_labels=False,
        conv_mask_to_poly=False,
    )


def _context(conf=None):
    return _DetectionFunctionContextImpl(frame_name="x.jpg", conf_threshold=conf)


def test_spec_passes_the_sdks_label_mapping_against_the_exports_task(trained):
    ckpt, ann, _ = trained
    function = autoannotate.create(str(ckpt))
    assert isinstance(function.spec, cvataa.DetectionFunctionSpec)
    (label,) = function.spec.labels
    assert (label.name, label.type) == ("face", "skeleton")
    assert [s.name for s in label.sublabels] == list(ann.skeletons["face"].keypoints)
    assert {s.type for s in label.sublabels} == {"points"}
    task = _task_labels(ann)
    assert [t.name for t in task] == ["face"]
    mapping = _mapper(function, task)._spec_id_mapping[0]
    assert mapping.id == task[0].id and mapping.expected_type == "skeleton"
    assert mapping.expected_num_elements == 5
    # a task that lacks one of the points is refused, as annotate_task refuses it
    task[0].sublabels = task[0].sublabels[:-1]
    with pytest.raises(cvataa.BadFunctionError, match="not in dataset"):
        _mapper(function, task)


def test_skeletons_carry_predicts_points_and_pass_the_driver(trained):
    ckpt, ann, paths = trained
    function = autoannotate.create(str(ckpt), point_threshold=-1e9)
    model = function.model
    mapper = _mapper(function, _task_labels(ann))
    skeleton = ann.skeletons["face"]
    found = 0
    for frame, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        shapes = function.detect(_context(0.0), image)
        expected = predict(model, [path], skeleton, "face", score_threshold=0.0, num_workers=0)
        assert len(shapes) == expected["instance_id"].nunique()
        for shape, (_, rows) in zip(shapes, expected.groupby("instance_id"), strict=True):
            assert shape.type.value == "skeleton"
            xy = np.array([e.points for e in shape.elements])
            np.testing.assert_allclose(xy, rows[["x", "y"]].to_numpy(), atol=1e-3)
            assert [e.outside for e in shape.elements] == [False] * 5
        # the SDK's own per-image checks and label-id mapping, as annotate_task runs them
        tags, remapped = mapper.validate_and_remap(shapes, frame)
        assert tags == [] and len(remapped) == len(shapes)
        assert all(s.frame == frame and s.source == "auto" for s in remapped)
        found += len(shapes)
    assert found > 0, "the trained model found nothing: the comparison compared nothing"


def test_low_score_points_come_out_outside(trained):
    ckpt, ann, paths = trained
    function = autoannotate.create(str(ckpt))
    image = Image.open(paths[0]).convert("RGB")
    preds = function.predict(image, 0.0)
    assert len(preds), "no detection to test on"
    cut = float(np.median(preds["keypoint_score"]))
    function.point_threshold = cut
    shapes = function.detect(_context(0.0), image)
    outside = [e.outside for s in shapes for e in s.elements]
    expected = (preds.sort_values(["instance_id", "point_index"])["keypoint_score"] < cut).tolist()
    assert outside == expected and any(outside) and not all(outside)
    # an outside point still counts as an element: the driver accepts the skeleton
    _mapper(function, _task_labels(ann)).validate_and_remap(shapes, 0)


def test_the_drivers_confidence_threshold_is_honoured(trained):
    ckpt, _, paths = trained
    function = autoannotate.create(str(ckpt))
    image = Image.open(paths[0]).convert("RGB")
    scores = function.predict(image, 0.0).groupby("instance_id")["score"].first()
    assert len(scores) >= 2, "need two detections of different scores"
    cut = float(np.median(scores)) + 1e-6
    kept = function.detect(_context(cut), image)
    assert len(kept) == int((scores >= cut).sum()) < len(scores)
    assert len(function.detect(_context(1.0), image)) == int((scores >= 1.0).sum())
    # no threshold from the driver: predict's default
    default = function.detect(_context(None), image)
    assert len(default) == int((scores >= autoannotate.DEFAULT_SCORE_THRESHOLD).sum())


def test_cvat_cli_loads_it_from_the_documented_command(trained):
    """The README's command, parsed by cvat-cli's own parser and loaded by its loader."""
    import argparse

    from cvat_cli._internal.commands_all import COMMANDS
    from cvat_cli._internal.common import FunctionLoader, configure_common_arguments

    ckpt, _, _ = trained
    parser = argparse.ArgumentParser()
    configure_common_arguments(parser)
    COMMANDS.configure_parser(parser)
    argv = ["--server-host", "https://app.cvat.ai", "--auth", "me"]
    argv += ["task", "auto-annotate", "42", "--function-module", "kpnb.autoannotate"]
    argv += ["-p", f"checkpoint=str:{ckpt}", "-p", "point_threshold=float:0.5"]
    argv += ["--conf-threshold", "0.3"]
    args = parser.parse_args(argv)
    assert args.task_id == 42 and args.conf_threshold == 0.3
    loader = FunctionLoader(args.function_module, args.function_file, args.function_parameters)
    function = loader.load()
    assert isinstance(function, autoannotate.KpnbFunction) and function.point_threshold == 0.5
    # the agent's way (function create-native) serialises the same spec for the server
    from cvat_cli._internal.agent_driver_detection import AgentDetectionFunctionDriver

    fields = AgentDetectionFunctionDriver.get_remote_function_fields(function.spec)
    assert [lab["name"] for lab in fields["labels_v2"]] == ["face"]
    assert [s["name"] for s in fields["labels_v2"][0]["sublabels"]] == list(
        function.skeleton.keypoints
    )


def test_a_checkpoint_without_a_label_asks_for_one(tmp_path):
    from kpnb.checkpoint import Checkpoint
    from kpnb.model import build_model
    from kpnb.skeleton import Skeleton

    model = build_model(2, weights=None, preset="tiny", size=SIZE)
    path = Checkpoint.of_model(model, Skeleton(("a", "b"))).save(tmp_path / "best.pth")
    with pytest.raises(KpnbError, match="label=str:NAME"):
        autoannotate.create(str(path))
    assert autoannotate.create(str(path), label="thing").spec.labels[0].name == "thing"


def test_without_cvat_sdk_kpnb_imports_and_the_function_says_what_to_install(tmp_path):
    """cvat_sdk hidden: kpnb, its CLI and this module import; create() is one line."""
    code = (
        "import sys\n"
        "sys.modules['cvat_sdk'] = sys.modules['cvat_sdk.auto_annotation'] = None\n"
        "import kpnb, kpnb.cli, kpnb.autoannotate\n"
        "from kpnb.errors import KpnbError\n"
        "try:\n"
        "    kpnb.autoannotate.create('nothing.pth')\n"
        "except KpnbError as e:\n"
        "    print(e)\n"
    )
    root = Path(autoannotate.__file__).parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert out.stdout.strip().splitlines() == [autoannotate.INSTALL_HINT]
    assert 'pip install "kpnb[cvat]"' in out.stdout
