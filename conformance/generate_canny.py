"""Golden edge maps for imageproc.Canny: cv2.Canny (opencv-python-headless
4.10.0.84) on a few small rendered images.

Writes conformance/testdata/canny/: each image as an RGB PNG (<name>.png),
and for each threshold pair the edge map cv2.Canny(cvtColor(rgb,
COLOR_RGB2GRAY), low, high) with the defaults apertureSize=3,
L2gradient=False as a grayscale PNG (<name>_<low>_<high>.png); cases.json
lists them. Deterministic (fixed seeds). Run with the reference venv:

    conformance/.venv/bin/python conformance/generate_canny.py
"""

import json
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "testdata" / "canny"
W, H = 128, 96
# The last pair is swapped and fractional: cv2.Canny swaps, then floors.
PAIRS = [(100, 200), (50, 150), (20, 60), (150.7, 40.5)]
# cv2.Canny on the 3-channel RGB array itself, as ControlNet's usual
# preprocessor calls it (imageproc.CannyRGB).
RGB_PAIRS = [(100, 200), (20, 60)]


def shapes():
    """Flat-coloured shapes, antialiased, at several angles."""
    img = np.full((H, W, 3), (40, 90, 160), np.uint8)
    cv2.rectangle(img, (8, 10), (50, 44), (230, 200, 40), -1)
    cv2.circle(img, (88, 30), 20, (200, 30, 60), -1, cv2.LINE_AA)
    pts = np.array([[20, 88], [60, 54], [74, 90]], np.int32)
    cv2.fillPoly(img, [pts], (250, 250, 250), cv2.LINE_AA)
    cv2.ellipse(img, (104, 74), (18, 10), 30, 0, 360, (10, 10, 10), -1, cv2.LINE_AA)
    return img


def gradients():
    """Smooth linear and radial gradients with a few soft steps; no text."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    r = 255 * xx / (W - 1)
    g = 255 * (0.5 + 0.5 * np.sin(yy / 9.0))
    d = np.hypot(xx - 80, yy - 40)
    b = np.clip(255 - 4 * d, 0, 255)
    img = np.stack([r, g, b], -1)
    img[(xx + 2 * yy) % 60 < 30] *= 0.8
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def noise():
    """A gradient under strong Gaussian noise."""
    rng = np.random.RandomState(13)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    base = 60 + 120 * (xx + yy) / (W + H)
    img = base[..., None] + rng.normal(0, 25, (H, W, 3))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def scene():
    """A photo-like scene: sky gradient, hills, a sun, a house, blurred, with
    mild sensor noise."""
    rng = np.random.RandomState(7)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W, 3), np.float64)
    img[..., 0] = 120 + 60 * yy / H
    img[..., 1] = 170 + 40 * yy / H
    img[..., 2] = 235 - 20 * yy / H
    img = img.astype(np.uint8)
    cv2.circle(img, (100, 20), 11, (255, 230, 120), -1, cv2.LINE_AA)
    hill = (60 + 12 * np.sin(xx[0] / 14.0) + 6 * np.cos(xx[0] / 5.0)).astype(int)
    for x in range(W):
        img[hill[x]:, x] = (70, 130, 60)
    cv2.rectangle(img, (30, 50), (62, 78), (180, 120, 90), -1)
    cv2.fillPoly(img, [np.array([[26, 50], [46, 34], [66, 50]], np.int32)], (120, 40, 40), cv2.LINE_AA)
    cv2.rectangle(img, (42, 62), (50, 78), (60, 40, 30), -1)
    img = cv2.GaussianBlur(img, (5, 5), 1.2)
    img = img.astype(np.float64) + rng.normal(0, 3, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def lines():
    """Thin lines and a checkerboard: every NMS direction, borders touched."""
    img = np.full((H, W, 3), 20, np.uint8)
    cv2.rectangle(img, (0, 0), (W // 4, H // 3), (200, 200, 200), -1)
    for k, ang in enumerate(range(0, 180, 15)):
        t = np.deg2rad(ang)
        p = (int(round(64 - 60 * np.cos(t))), int(round(48 - 60 * np.sin(t))))
        q = (int(round(64 + 60 * np.cos(t))), int(round(48 + 60 * np.sin(t))))
        cv2.line(img, p, q, (255, 160 + 6 * k, 90), 1, cv2.LINE_AA if k % 2 else cv2.LINE_8)
    sq = ((np.add.outer(np.arange(24) // 6, np.arange(32) // 8)) % 2 * 255).astype(np.uint8)
    img[H - 24:, W - 32:] = sq[..., None]
    return img


def gray(rgb):
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # The fixed-point formula imageproc.Gray8 states, checked here.
    r, gg, b = (rgb[..., i].astype(np.int64) for i in range(3))
    want = (9798 * r + 19235 * gg + 3735 * b + (1 << 14)) >> 15
    assert (g == want).all(), "cvtColor RGB2GRAY is not the stated formula"
    return g


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, fn in [("shapes", shapes), ("gradients", gradients), ("noise", noise),
                     ("scene", scene), ("lines", lines)]:
        rgb = fn()
        cv2.imwrite(str(OUT / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        g = gray(rgb)
        for lo, hi in PAIRS:
            edges = cv2.Canny(g, lo, hi)
            fname = f"{name}_{lo:g}_{hi:g}.png"
            cv2.imwrite(str(OUT / fname), edges)
            cases.append({"image": f"{name}.png", "mode": "gray", "low": lo, "high": hi,
                          "edges": fname, "edge_pixels": int((edges > 0).sum())})
        for lo, hi in RGB_PAIRS:
            edges = cv2.Canny(rgb, lo, hi)
            fname = f"{name}_rgb_{lo:g}_{hi:g}.png"
            cv2.imwrite(str(OUT / fname), edges)
            cases.append({"image": f"{name}.png", "mode": "rgb", "low": lo, "high": hi,
                          "edges": fname, "edge_pixels": int((edges > 0).sum())})
    meta = {"opencv": cv2.__version__, "gray": "cv2.cvtColor(rgb, COLOR_RGB2GRAY)",
            "canny": "mode gray: cv2.Canny(gray, low, high); mode rgb: cv2.Canny(rgb, low, high) "
                     "on the R, G, B array (apertureSize=3, L2gradient=False)",
            "cases": cases}
    (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(cases)} cases, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
