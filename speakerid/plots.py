"""A DET curve as an image, for TensorBoard and for evaluation reports.

Drawn with Pillow (already required by TensorBoard's image support) rather than matplotlib: one small plot
type does not justify a plotting stack, and the result is an RGB array that `SummaryWriter.add_image` and
PNG files take directly. Axes are normal deviates (probit) of the error rates, as in the NIST DET plots.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from speakerid.metrics import compute_eer, det_curve, format_eer

TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)  # grid lines, on both axes
UNLABELLED = (0.002,)  # too close to its neighbours to carry a label
LIMITS = (0.0005, 0.9)


def probit(p: np.ndarray) -> np.ndarray:
    """Normal deviate of probabilities, clipped to the plotted range."""
    p = np.clip(np.asarray(p, dtype=np.float64), *LIMITS)
    return torch.special.ndtri(torch.as_tensor(p)).numpy()


# One colour per system in a comparison (matplotlib's tab10, which stays distinguishable in grey-scale print).
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
EER_MARK = (214, 39, 40)


class DetAxes:
    """An empty DET plot (probit axes, grid, labels, title) to draw curves on."""

    def __init__(self, size: int = 480, title: str = ""):
        self.image = Image.new("RGB", (size, size), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = font = ImageFont.load_default(size=max(10, size // 40))
        self.left, self.top = int(size * 0.14), int(size * 0.08)
        self.right, self.bottom = int(size * 0.96), int(size * 0.86)
        self.lo, self.hi = probit(LIMITS[0]), probit(LIMITS[1])
        draw, x, y = self.draw, self.x, self.y
        left, top, right, bottom = self.left, self.top, self.right, self.bottom
        for tick in TICKS:
            label = "" if tick in UNLABELLED else f"{100 * tick:g}"
            draw.line([(x(tick), top), (x(tick), bottom)], fill=(225, 225, 225))
            draw.line([(left, y(tick)), (right, y(tick))], fill=(225, 225, 225))
            draw.text((x(tick), bottom + 4), label, fill="black", font=font, anchor="mt")
            draw.text((left - 4, y(tick)), label, fill="black", font=font, anchor="rm")
        draw.line([(x(LIMITS[0]), y(LIMITS[0])), (x(LIMITS[1]), y(LIMITS[1]))], fill=(200, 200, 200))  # FAR = FRR
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text(((left + right) / 2, bottom + 8 + 2 * font.size), "false acceptance rate (%)", fill="black",
                  font=font, anchor="mt")
        label_image = Image.new("RGB", (bottom - top, font.size + 4), "white")
        ImageDraw.Draw(label_image).text(((bottom - top) / 2, 0), "false rejection rate (%)", fill="black",
                                         font=font, anchor="ma")
        self.image.paste(label_image.rotate(90, expand=True), (2, top))
        if title:
            draw.text(((left + right) / 2, top - 6), title, fill="black", font=font, anchor="md")

    def x(self, p):
        return self.left + (probit(p) - self.lo) / (self.hi - self.lo) * (self.right - self.left)

    def y(self, p):
        return self.bottom - (probit(p) - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)

    def curve(self, far: np.ndarray, frr: np.ndarray, color: tuple[int, int, int]) -> None:
        points = np.stack([self.x(far), self.y(frr)], axis=1).round()
        keep = np.r_[True, np.any(np.diff(points, axis=0) != 0, axis=1)]  # one vertex per pixel step
        self.draw.line([tuple(p) for p in points[keep]], fill=color, width=2)

    def mark_eer(self, eer: float, color: tuple[int, int, int], text: str | None = None) -> None:
        cx, cy = self.x(eer), self.y(eer)
        self.draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], outline=color, width=2)
        if text:
            self.draw.text((cx + 8, cy - 8), text, fill=color, font=self.font, anchor="ld")

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        """Names with their colours, in the upper right corner (where DET curves rarely pass)."""
        line_height = self.font.size + 4
        width = max(self.draw.textlength(name, font=self.font) for name, _ in entries) + 30
        x0, y0 = self.right - 6 - width, self.top + 6
        self.draw.rectangle([x0, y0, self.right - 6, y0 + line_height * len(entries) + 4], fill="white",
                            outline=(180, 180, 180))
        for i, (name, color) in enumerate(entries):
            yc = y0 + 4 + line_height * i + line_height / 2
            self.draw.line([(x0 + 6, yc), (x0 + 22, yc)], fill=color, width=3)
            self.draw.text((x0 + 28, yc), name, fill="black", font=self.font, anchor="lm")

    def array(self) -> np.ndarray:
        return np.asarray(self.image)


def det_image(scores, labels, eer: float | None = None, title: str = "", size: int = 480) -> np.ndarray:
    """RGB image [size, size, 3] uint8 of the DET curve (false-acceptance vs false-rejection rate)."""
    axes = DetAxes(size, title)
    axes.curve(*det_curve(scores, labels), PALETTE[0])
    if eer is not None:
        axes.mark_eer(eer, EER_MARK, f"EER {format_eer(eer)}")
    return axes.array()


def det_comparison_image(systems: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str = "",
                         size: int = 640) -> np.ndarray:
    """RGB image of several systems' DET curves, (name, scores, labels) each, one colour each, their EER
    marked on the curve and given in the legend."""
    if not 1 <= len(systems) <= len(PALETTE):
        raise ValueError(f"a comparison draws 1 to {len(PALETTE)} systems, got {len(systems)}")
    axes = DetAxes(size, title)
    entries = []
    for (name, scores, labels), color in zip(systems, PALETTE):
        axes.curve(*det_curve(scores, labels), color)
        eer = compute_eer(scores, labels)
        axes.mark_eer(eer, color)
        entries.append((f"{name}  EER {format_eer(eer)}", color))
    axes.legend(entries)
    return axes.array()
