"""A DET curve as an image, for TensorBoard and for evaluation reports.

Drawn with Pillow (already required by TensorBoard's image support) rather than matplotlib: one small plot
type does not justify a plotting stack, and the result is an RGB array that `SummaryWriter.add_image` and
PNG files take directly. Axes are normal deviates (probit) of the error rates, as in the NIST DET plots.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from speakerid.metrics import det_curve, format_eer

TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)  # grid lines, on both axes
UNLABELLED = (0.002,)  # too close to its neighbours to carry a label
LIMITS = (0.0005, 0.9)


def probit(p: np.ndarray) -> np.ndarray:
    """Normal deviate of probabilities, clipped to the plotted range."""
    p = np.clip(np.asarray(p, dtype=np.float64), *LIMITS)
    return torch.special.ndtri(torch.as_tensor(p)).numpy()


def det_image(scores, labels, eer: float | None = None, title: str = "", size: int = 480) -> np.ndarray:
    """RGB image [size, size, 3] uint8 of the DET curve (false-acceptance vs false-rejection rate)."""
    far, frr = det_curve(scores, labels)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, size // 40))
    left, top, right, bottom = int(size * 0.14), int(size * 0.08), int(size * 0.96), int(size * 0.86)
    lo, hi = probit(LIMITS[0]), probit(LIMITS[1])

    def x(p):
        return left + (probit(p) - lo) / (hi - lo) * (right - left)

    def y(p):
        return bottom - (probit(p) - lo) / (hi - lo) * (bottom - top)

    for tick in TICKS:
        label = "" if tick in UNLABELLED else f"{100 * tick:g}"
        draw.line([(x(tick), top), (x(tick), bottom)], fill=(225, 225, 225))
        draw.line([(left, y(tick)), (right, y(tick))], fill=(225, 225, 225))
        draw.text((x(tick), bottom + 4), label, fill="black", font=font, anchor="mt")
        draw.text((left - 4, y(tick)), label, fill="black", font=font, anchor="rm")
    draw.line([(x(LIMITS[0]), y(LIMITS[0])), (x(LIMITS[1]), y(LIMITS[1]))], fill=(200, 200, 200))  # FAR = FRR
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, bottom + 8 + 2 * font.size), "false acceptance rate (%)", fill="black", font=font, anchor="mt")
    label_image = Image.new("RGB", (bottom - top, font.size + 4), "white")
    ImageDraw.Draw(label_image).text(((bottom - top) / 2, 0), "false rejection rate (%)", fill="black", font=font,
                                     anchor="ma")
    image.paste(label_image.rotate(90, expand=True), (2, top))
    if title:
        draw.text(((left + right) / 2, top - 6), title, fill="black", font=font, anchor="md")

    points = np.stack([x(far), y(frr)], axis=1).round()
    keep = np.r_[True, np.any(np.diff(points, axis=0) != 0, axis=1)]  # one vertex per pixel step
    draw.line([tuple(p) for p in points[keep]], fill=(31, 119, 180), width=2)
    if eer is not None:
        cx, cy = x(eer), y(eer)
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], outline=(214, 39, 40), width=2)
        draw.text((cx + 8, cy - 8), f"EER {format_eer(eer)}", fill=(214, 39, 40), font=font, anchor="ld")
    return np.asarray(image)
