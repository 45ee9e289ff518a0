"""The synthetic animal face: its skeleton, where its keypoints sit, and how it is drawn.

A face lives in face coordinates (units of the head radius, u right, v down, upright) and
is placed by a centre, a radius and a rotation: ears behind a shaded furry head, muzzle,
eyes, nose, mouth, whiskers. Pupils, nose and inner ears are flat `FEATURE_COLOURS` at
their keypoints, so each point stays well defined.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kpnb.skeleton import Skeleton
from kpnb.synthetic.textures import _COATS, _blend, _jitter, _mix

FACE = Skeleton(
    ("nose", "left_eye", "right_eye", "left_ear", "right_ear"),
    ((0, 1), (0, 2), (1, 2), (1, 3), (2, 4)),
)
# Keypoints in face coordinates (units of the head radius, u right, v down, upright face).
_KEYPOINTS_UV = np.array(
    [[0.0, 0.28], [0.38, -0.18], [-0.38, -0.18], [0.74, -0.98], [-0.74, -0.98]]
)
_EAR_UV = np.array([[0.30, -0.62], [0.98, -0.38], [0.84, -1.32]])  # left ear; right is mirrored
_EARS = [_EAR_UV * np.array([sign, 1.0]) for sign in (1.0, -1.0)]
_HEAD_RX, _HEAD_RY = 1.0, 0.86
# Feature colours drawn centred on each keypoint; tests read them back at the written positions.
PUPIL = (12, 12, 12)
NOSE = (160, 62, 80)
INNER_EAR = (242, 160, 178)
FEATURE_COLOURS = (NOSE, PUPIL, PUPIL, INNER_EAR, INNER_EAR)
_IRISES = ((214, 160, 42), (128, 164, 64), (150, 98, 42), (104, 140, 170), (196, 128, 40))
_CREAM = np.array([238, 228, 208], np.float32)


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _to_image(uv: np.ndarray, centre, radius, rot) -> np.ndarray:
    return np.asarray(centre) + (uv * radius) @ rot.T


def _in_silhouette(points: np.ndarray, centre, radius, rot) -> np.ndarray:
    """Which image points fall inside a face (head ellipse or either ear)."""
    uv = ((points - np.asarray(centre)) @ rot) / radius  # inverse of _to_image
    inside = (uv[:, 0] / _HEAD_RX) ** 2 + (uv[:, 1] / _HEAD_RY) ** 2 <= 1.0
    for ear in _EARS:
        inside |= _triangle_sd(uv[:, 0], uv[:, 1], ear) >= 0
    return inside


def _shadows(img: np.ndarray, faces, light: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Soft contact shadows of all faces on the backdrop, cast away from the light.

    `scale` maps image pixels to `img` pixels (the backdrop is drawn at half size)."""
    if not faces:
        return img
    h, w = img.shape[:2]
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    head = np.stack([_HEAD_RX * np.cos(t), _HEAD_RY * np.sin(t)], axis=1)
    for centre, radius, rot, _ in faces:
        offset = -light[:2] * radius * 0.16 + np.array([0.0, radius * 0.06])
        for poly in (head, *_EARS):
            pts = (_to_image(poly * 1.04, centre, radius, rot) + offset) * scale
            draw.polygon([tuple(p) for p in pts], fill=255)
    blur = 0.14 * scale * float(np.mean([f[1] for f in faces]))
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255
    return img * (1 - 0.5 * soft)[..., None]


def _coat(rng: np.random.Generator) -> dict:
    """How one animal looks: fur, markings, eyes (appearance only, no geometry)."""
    return {
        "fur": _jitter(rng, _COATS[int(rng.integers(len(_COATS)))], 0.08),
        "iris": _jitter(rng, _IRISES[int(rng.integers(len(_IRISES)))], 0.08),
        "muzzle": float(rng.uniform(0.5, 0.85)),
        "tabby": bool(rng.random() < 0.35),
        "phase": rng.uniform(0, 2 * np.pi, 4),
        "streaks": rng.uniform(0, 2 * np.pi, 3),
    }


def _aa(sd: np.ndarray, radius: float) -> np.ndarray:
    """Coverage 0-1 from a signed distance in face units (positive inside), 1 px ramp."""
    return np.clip(sd * radius + 0.5, 0.0, 1.0)


def _triangle_sd(u: np.ndarray, v: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Signed distance to a triangle's edges (positive inside), in face units."""
    a, b, c = np.asarray(tri, float).tolist()  # python floats keep the arrays float32
    area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    sign = 1.0 if area > 0 else -1.0
    out = None
    for p, q in ((a, b), (b, c), (c, a)):
        ex, ey = q[0] - p[0], q[1] - p[1]
        d = (sign / float(np.hypot(ex, ey))) * (ex * (v - p[1]) - ey * (u - p[0]))
        out = d if out is None else np.minimum(out, d)
    return out


def _fur_streaks(u: np.ndarray, v: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Fur: strands radiating from the nose, as three waves around it with incommensurate
    frequencies (integers, so the pattern closes on itself), each wobbling outward; -1..1."""
    ang = np.arctan2(v - 0.2, u)
    rad = np.hypot(u, v - 0.2)
    out = np.zeros_like(u)
    for k, (freq, wobble) in enumerate(((37, 3.0), (61, 5.0), (97, 7.0))):
        out += np.sin(ang * freq + rad * wobble + float(phase[k]))
    return out / 3.0


class _FaceFrame:
    """Where one face is drawn: the crop of the image it can touch (`box`, x0 y0 x1 y1)
    and, for each pixel of the crop, its face coordinates `u`, `v`, how far out it lies on
    the head ellipse `q` (1 at the edge) and the fur streaks there; `keypoints` ``[K, 2]``
    in image pixels, `light` in face coordinates. The face's centre is on the image."""

    def __init__(self, shape, centre, radius: float, rot, coat: dict, light):
        h, w = shape[:2]
        reach = 1.6 * radius
        x0, x1 = max(0, int(centre[0] - reach)), min(w, int(centre[0] + reach) + 1)
        y0, y1 = max(0, int(centre[1] - reach)), min(h, int(centre[1] + reach) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        pix = np.stack([xx + 0.5 - centre[0], yy + 0.5 - centre[1]], -1) @ rot.astype(np.float32)
        u, v = pix[..., 0] / np.float32(radius), pix[..., 1] / np.float32(radius)
        self.centre, self.radius, self.rot, self.box = centre, radius, rot, (x0, y0, x1, y1)
        self.u, self.v, self.q = u, v, np.sqrt((u / _HEAD_RX) ** 2 + (v / _HEAD_RY) ** 2)
        self.streaks = _fur_streaks(u, v, coat["streaks"])
        self.keypoints = _to_image(_KEYPOINTS_UV, centre, radius, rot)
        self.light = (*(rot.T @ light[:2]).tolist(), float(light[2]))

    def window(self, centre, half: float) -> tuple[slice, slice]:
        """Rows and columns of the crop within `half` px of the image point `centre`."""
        (h, w), cx, cy = self.u.shape, centre[0] - self.box[0], centre[1] - self.box[1]
        return (
            slice(max(0, int(cy - half)), max(0, min(h, int(cy + half) + 2))),
            slice(max(0, int(cx - half)), max(0, min(w, int(cx + half) + 2))),
        )


def _draw_face(img: np.ndarray, centre, radius: float, rot, coat: dict, light) -> None:
    """Composite one animal face into `img` (``[H, W, 3]`` float32, in place), back to front.
    Small features are computed only in a window around them, which keeps this fast."""
    face = _FaceFrame(img.shape, centre, radius, rot, coat, light)
    x0, y0, x1, y1 = face.box
    out = img[y0:y1, x0:x1]
    _draw_ears(out, face, coat["fur"])
    head, lambert = _shaded_head(face, coat)
    _draw_muzzle(head, face, coat, lambert)
    _draw_eyes(head, face, coat["iris"])
    _draw_nose(head, face)
    head_a = _aa((1.0 - face.q) * 0.92 + 0.02 * face.streaks, radius)
    img[y0:y1, x0:x1] = _blend(out, head, head_a)
    _draw_lines(img, face, coat)


def _draw_ears(out: np.ndarray, face: _FaceFrame, fur) -> None:
    """Both ears into the crop `out` (in place), behind the head: fur darkening towards the
    tip, and a pink inside, flat at its keypoint, darkening at its rim."""
    u, v, radius = face.u, face.v, face.radius
    for sign, ear in zip((1.0, -1.0), _EARS, strict=True):
        corners = _to_image(ear, face.centre, radius, face.rot)
        mid = (corners.min(0) + corners.max(0)) / 2
        span = float((corners.max(0) - corners.min(0)).max())
        win = face.window(mid, span / 2 + 1)
        eu, ev, st = u[win], v[win], face.streaks[win]
        tipward = np.clip((-ev - 0.6) / 0.7, 0, 1)
        ear_col = fur * (0.82 - 0.25 * tipward + 0.06 * st)[..., None]
        out[win] = _blend(out[win], ear_col, _aa(_triangle_sd(eu, ev, ear), radius))
        kp = _KEYPOINTS_UV[3] * np.array([sign, 1.0])
        sd_in = _triangle_sd(eu, ev, kp + (ear - kp) * 0.6)
        inner = _mix(np.asarray(INNER_EAR) * 0.72, INNER_EAR, sd_in * radius / 0.6)
        out[win] = _blend(out[win], inner, _aa(sd_in, radius))


def _shaded_head(face: _FaceFrame, coat: dict) -> tuple[np.ndarray, np.ndarray]:
    """The head's fur over the whole crop, ``[h, w, 3]``: an ellipsoid lit by Lambert's law,
    fur streaks, and for a tabby dark stripes across the forehead. Also the Lambert term."""
    u, v, (lx, ly, lz) = face.u, face.v, face.light
    nz = np.sqrt(np.clip(1.0 - face.q**2, 0.0, 1.0))
    lambert = np.clip((u / _HEAD_RX) * lx + (v / _HEAD_RY) * ly + nz * lz, 0, 1)
    shade = 0.5 + 0.6 * lambert + 0.07 * face.streaks
    if coat["tabby"]:  # the stripes fade out above the eyes
        ph = coat["phase"].tolist()
        stripes = np.clip(np.sin(u * 11 + ph[0] + 2 * np.sin(v * 3 + ph[1])) * 2 - 0.6, 0, 1)
        shade = shade * (1 - 0.45 * stripes * np.clip((-v - 0.42) / 0.2, 0, 1))
    return coat["fur"] * shade[..., None], lambert


def _draw_muzzle(head: np.ndarray, face: _FaceFrame, coat: dict, lambert: np.ndarray) -> None:
    """The pale muzzle (two cheeks, a chin and the bridge around the nose) into `head`."""
    radius = face.radius
    mid = _to_image(np.array([0.0, 0.5]), face.centre, radius, face.rot)
    win = face.window(mid, 0.55 * radius + 3)
    mu, mv = face.u[win], face.v[win]
    muzzle = np.maximum.reduce(
        [
            1 - np.hypot((mu - 0.16) / 0.27, (mv - 0.42) / 0.21),
            1 - np.hypot((mu + 0.16) / 0.27, (mv - 0.42) / 0.21),
            1 - np.hypot(mu / 0.22, (mv - 0.62) / 0.14),
            1 - np.hypot(mu / 0.2, (mv - 0.27) / 0.17),  # the bridge: light all round the nose
        ]
    )
    fur = coat["fur"]
    pale = fur + (_CREAM - fur) * coat["muzzle"]
    pale = pale * (0.75 + 0.3 * lambert[win] + 0.05 * face.streaks[win])[..., None]
    head[win] = _blend(head[win], pale, np.clip(muzzle * radius / 3, 0, 1))


def _draw_eyes(head: np.ndarray, face: _FaceFrame, iris_colour) -> None:
    """Both eyes into `head`: a dark rim, a shaded iris at least ~2 px wide (even on small
    faces), a flat pupil at the keypoint and a catchlight towards the light."""
    radius, (lx, ly, _) = face.radius, face.light
    re, rp = max(radius * 0.17, 5.0), max(radius * 0.09, 2.5)
    rim_px = min(1.2, max(0.7, 0.12 * re))
    rim = np.float32([28, 22, 18])
    norm = max(np.hypot(lx, ly), 1e-6)
    for j in (1, 2):
        win = face.window(face.keypoints[j], re + 1)
        du = (face.u[win] - float(_KEYPOINTS_UV[j, 0])) * radius  # pixels, face axes
        dv = (face.v[win] - float(_KEYPOINTS_UV[j, 1])) * radius
        d = np.hypot(du, dv)
        iris = iris_colour * (0.85 + 0.3 * np.clip(dv / re, -0.5, 1))[..., None]
        eye = _blend(np.broadcast_to(rim, iris.shape), iris, np.clip(re - rim_px - d, 0, 1))
        patch = _blend(head[win], eye, np.clip(re - d + 0.5, 0, 1))
        patch = _blend(patch, PUPIL, np.clip(rp - d + 0.5, 0, 1))
        if re >= 5:  # the catchlight stays clear of the pupil's centre
            dc = np.hypot(du - lx / norm * 0.55 * re, dv - ly / norm * 0.55 * re)
            patch = _blend(patch, (250, 250, 246), np.clip(0.17 * re - dc + 0.5, 0, 1))
        head[win] = patch


def _nose_radius(radius: float) -> float:
    return max(radius * 0.11, 2.5)


def _draw_nose(head: np.ndarray, face: _FaceFrame) -> None:
    """The nose into `head`: a rounded triangle with a dark edge, flat `NOSE` around its
    keypoint, and a shine on a large face."""
    radius = face.radius
    rn = _nose_radius(radius)
    win = face.window(face.keypoints[0], 1.4 * rn + 1)
    a_ = face.u[win] * (radius / rn)
    b_ = (face.v[win] - float(_KEYPOINTS_UV[0, 1])) * (radius / rn)
    nq = np.hypot(a_ / (1.3 * (1 - 0.35 * np.clip(b_, -1, 1))), b_ / 0.85)
    nose_sd = (1 - nq) * rn * 0.8  # about pixels inside the nose's edge
    patch = _blend(head[win], (78, 34, 40), np.clip(nose_sd + 1.3, 0, 1))  # a dark edge
    patch = _blend(patch, NOSE, np.clip(nose_sd + 0.5, 0, 1))
    if rn >= 4:
        shine = np.clip(0.22 * rn - np.hypot(a_, b_ + 0.55) * rn + 0.5, 0, 1)
        patch = _blend(patch, (235, 170, 180), 0.6 * shine)
    head[win] = patch


def _draw_lines(img: np.ndarray, face: _FaceFrame, coat: dict) -> None:
    """Mouth and whiskers into `img`: thin anti-aliased strokes drawn at 2x and averaged."""
    centre, radius, rot, rn = face.centre, face.radius, face.rot, _nose_radius(face.radius)
    x0, y0, x1, y1 = face.box
    s = 2
    mouth = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    whisk = Image.new("L", mouth.size, 0)
    dm, dw = ImageDraw.Draw(mouth), ImageDraw.Draw(whisk)

    def at(uv):
        p = _to_image(np.asarray(uv, float), centre, radius, rot)
        return [((x - x0) * s, (y - y0) * s) for x, y in np.atleast_2d(p)]

    top = 0.28 + 0.8 * rn / radius
    width = max(2, round(radius * 0.05 * s))
    dm.line(at([[0, top], [0, 0.47]]), fill=255, width=width)
    for sign in (1.0, -1.0):
        dm.line(
            at([[0, 0.47], [sign * 0.09, 0.53], [sign * 0.19, 0.5]]),
            fill=255,
            width=width,
            joint="curve",
        )
        for k, (dv, tip) in enumerate(((0.40, 0.30), (0.46, 0.46), (0.52, 0.64))):
            bend = coat["phase"][k % 4] * 0.01
            path = [[sign * 0.24, dv], [sign * 0.7, (dv + tip) / 2 + bend], [sign * 1.28, tip]]
            dw.line(at(path), fill=200, width=max(1, round(radius * 0.018 * s)))
    size = (x1 - x0, y1 - y0)
    m = np.asarray(mouth.resize(size, Image.BOX), np.float32) / 255
    wk = np.asarray(whisk.resize(size, Image.BOX), np.float32) / 255
    crop = img[y0:y1, x0:x1]
    crop = _blend(crop, coat["fur"] * 0.3, m * 0.85)
    img[y0:y1, x0:x1] = _blend(crop, (245, 242, 232), wk * 0.8)
