"""build_model: K outputs, COCO weights through a real download from 127.0.0.1, offline."""

import hashlib
import http.server
import logging
import threading

import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn

from kpnb import model as kmodel
from kpnb.model import WeightsUnavailableError, build_model, cpu_preset


def _k(model):
    return model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels


def test_random_model_has_k_outputs_and_the_cpu_preset():
    m = build_model(5, weights=None, size=192)
    assert _k(m) == 5
    assert m.transform.min_size == (192,) and m.transform.max_size == 192
    assert (
        m.roi_heads.fg_bg_sampler.batch_size_per_image == cpu_preset()["box_batch_size_per_image"]
    )
    d = build_model(5, weights=None, preset=None)
    assert d.transform.min_size == (640, 672, 704, 736, 768, 800)


@pytest.fixture(scope="module")
def coco_like_weights(tmp_path_factory):
    """A real 17-keypoint state dict, named the way torch.hub checks hashes."""
    torch.manual_seed(0)
    state = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    folder = tmp_path_factory.mktemp("weights")
    raw = folder / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    named = folder / f"keypointrcnn_test-{digest[:8]}.pth"
    raw.rename(named)
    return named, state


@pytest.fixture
def weights_server(coco_like_weights):
    path, _ = coco_like_weights
    body = path.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if not self.path.endswith(".pth"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}"
    httpd.shutdown()
    httpd.server_close()


def test_coco_weights_download_then_swap_the_keypoint_head(weights_server, coco_like_weights,
                                                           tmp_path, monkeypatch):  # fmt: skip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(kmodel, "COCO_URL", weights_server)
    _, state = coco_like_weights
    m = build_model(5, weights="coco")
    assert _k(m) == 5
    backbone_key = "backbone.body.layer1.0.conv1.weight"
    assert torch.equal(m.state_dict()[backbone_key], state[backbone_key])  # loaded, not random
    assert (tmp_path / "hub/checkpoints" / weights_server.rsplit("/", 1)[1]).is_file()  # cached
    three = build_model(5, num_classes=3, weights="coco")  # box head swapped only when needed
    assert three.roi_heads.box_predictor.cls_score.out_features == 3


def test_bad_hash_is_refused_and_not_cached(weights_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # same bytes, but the name promises another hash: torch.hub's check must refuse them
    monkeypatch.setattr(kmodel, "COCO_URL", weights_server.rsplit("-", 1)[0] + "-deadbeef.pth")
    with pytest.raises(WeightsUnavailableError, match="could not be downloaded"):
        build_model(5, weights="coco")
    assert not list((tmp_path / "hub/checkpoints").glob("*deadbeef*"))


def test_offline_is_one_clear_line_and_random_only_when_allowed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(kmodel, "COCO_URL", "http://127.0.0.1:9/keypointrcnn-fc266e95.pth")
    with pytest.raises(WeightsUnavailableError) as exc:
        build_model(5, weights="coco")
    msg = str(exc.value)
    assert "\n" not in msg and "weights=None" in msg and "put it in" in msg
    with caplog.at_level(logging.WARNING, logger="kpnb.model"):
        m = build_model(5, weights="coco", allow_random=True)
    assert _k(m) == 5 and "continuing from random weights" in caplog.text


def test_local_pth_path(coco_like_weights, tmp_path):
    path, state = coco_like_weights
    m = build_model(4, weights=path)
    assert _k(m) == 4
    key = "roi_heads.box_head.fc6.weight"
    assert torch.equal(m.state_dict()[key], state[key])
    with pytest.raises(WeightsUnavailableError, match="no such weights file"):
        build_model(4, weights=tmp_path / "missing.pth")
