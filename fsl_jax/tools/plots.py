"""Small PNG plots drawn with Pillow: line charts and labelled image grids.

matplotlib is not a dependency, so this draws the few figures the project needs
by hand: axes with "nice" ticks (1, 2 or 5 times a power of ten), a title, axis
labels, a legend, and one polyline per series. Charts sit side by side as panels.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colour-blind-friendly colours (Okabe & Ito), cycled over series.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
GREEN, RED, GREY = "#009E73", "#D55E00", "#777777"


@dataclasses.dataclass
class Series:
  """One line: ``xs`` and ``ys`` of equal length; ``style`` "line" or "points".

  Any sequence or array works; it is kept as a list of Python floats, since the
  drawing visits every point in Python. (A JAX array visited point by point
  costs a device round trip per value.)
  """

  label: str
  xs: Sequence[float]
  ys: Sequence[float]
  style: str = "line"
  color: str | None = None

  def __post_init__(self):
    self.xs = np.asarray(self.xs, dtype=np.float64).reshape(-1).tolist()
    self.ys = np.asarray(self.ys, dtype=np.float64).reshape(-1).tolist()
    if len(self.xs) != len(self.ys):
      raise ValueError(f"series {self.label!r}: {len(self.xs)} xs but {len(self.ys)} ys.")


@dataclasses.dataclass
class Panel:
  """One chart: its series, title and axis labels; ``ylim`` fixes the y range."""

  series: list[Series]
  title: str = ""
  xlabel: str = ""
  ylabel: str = ""
  ylim: tuple[float, float] | None = None


def font(size: int = 14) -> ImageFont.ImageFont:
  return ImageFont.load_default(size=size)


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
  """About ``count`` round tick values covering [low, high]: steps of 1, 2 or 5 x 10^k."""
  if not math.isfinite(low) or not math.isfinite(high):
    raise ValueError(f"tick range must be finite, got [{low}, {high}]")
  if high <= low:
    high = low + (abs(low) or 1.0)
  raw = (high - low) / max(1, count)
  power = 10.0 ** math.floor(math.log10(raw))
  step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
  first = math.floor(low / step + 1e-9)
  last = max(first + 1, math.ceil(high / step - 1e-9))
  # The first and last ticks enclose [low, high], so every point is inside the axes.
  return [round(i * step, 12) for i in range(first, last + 1)]


def tick_label(value: float) -> str:
  """Compact numbers: 20000 -> '20k', 0.5 -> '0.5', 1e-4 -> '1e-04'."""
  if value == 0:
    return "0"
  if abs(value) >= 1000 and float(value).is_integer():
    return f"{value / 1000:g}k"
  if abs(value) < 1e-3:
    return f"{value:.0e}"
  return f"{value:.4g}"


def _draw_panel(image: Image.Image, box: tuple[int, int, int, int], panel: Panel) -> None:
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = box
  small, medium = font(13), font(15)
  plot = (left + 62, top + 30, right - 14, bottom - 48)  # The axes' inner rectangle.
  x0, y0, x1, y1 = plot
  draw.text(((left + right) / 2, top + 6), panel.title, fill="black", font=medium, anchor="mt")
  points = [(x, y) for s in panel.series for x, y in zip(s.xs, s.ys, strict=True)]
  finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
  if not finite:
    draw.rectangle(plot, outline="black")
    draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=GREY, font=small, anchor="mm")
    return
  xs, ys = zip(*finite, strict=True)
  x_ticks = nice_ticks(min(xs), max(xs))
  y_ticks = nice_ticks(*(panel.ylim or (min(ys), max(ys))))
  x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

  def to_pixel(x: float, y: float) -> tuple[float, float]:
    px = x0 + (x - x_low) / (x_high - x_low) * (x1 - x0)
    py = y1 - (y - y_low) / (y_high - y_low) * (y1 - y0)
    return px, py

  for value in x_ticks:
    px, _ = to_pixel(value, y_low)
    draw.line([(px, y0), (px, y1)], fill="#E6E6E6")
    draw.line([(px, y1), (px, y1 + 5)], fill="black")
    draw.text((px, y1 + 8), tick_label(value), fill="black", font=small, anchor="mt")
  for value in y_ticks:
    _, py = to_pixel(x_low, value)
    draw.line([(x0, py), (x1, py)], fill="#E6E6E6")
    draw.line([(x0 - 5, py), (x0, py)], fill="black")
    draw.text((x0 - 8, py), tick_label(value), fill="black", font=small, anchor="rm")
  draw.rectangle(plot, outline="black")
  draw.text(((x0 + x1) / 2, bottom - 8), panel.xlabel, fill="black", font=small, anchor="mb")
  # A vertical y label: drawn on its own image, rotated, then pasted.
  if panel.ylabel:
    width = int(draw.textlength(panel.ylabel, font=small)) + 4
    label = Image.new("RGBA", (width, 18), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 1), panel.ylabel, fill="black", font=small)
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (left + 4, int((y0 + y1) / 2 - width / 2)), rotated)

  for index, s in enumerate(panel.series):
    color = s.color or COLORS[index % len(COLORS)]
    pixels = [to_pixel(x, y) for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(x + y)]
    if s.style == "points":
      for px, py in pixels:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    elif len(pixels) == 1:
      px, py = pixels[0]
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    elif pixels:
      draw.line(pixels, fill=color, width=2, joint="curve")
  # Legend: in the corner of the axes that covers the fewest data points.
  labelled = [(i, s) for i, s in enumerate(panel.series) if s.label]
  if labelled:
    width = max(int(draw.textlength(s.label, font=small)) for _, s in labelled) + 34
    height = 18 * len(labelled) + 4
    data = []  # Points along every line, not only its vertices.
    for series in panel.series:
      pts = [
        to_pixel(x, y) for x, y in zip(series.xs, series.ys, strict=True) if math.isfinite(x + y)
      ]
      for (ax, ay), (bx, by) in itertools.pairwise(pts):
        data += [(ax + t / 10 * (bx - ax), ay + t / 10 * (by - ay)) for t in range(10)]
      data += pts[-1:]
    corners = [(x1 - width - 6, y0 + 6), (x0 + 6, y0 + 6), (x1 - width - 6, y1 - height - 6)]
    corners.append((x0 + 6, y1 - height - 6))

    def covered(corner) -> int:
      cx, cy = corner
      return sum(
        cx - 8 <= px <= cx + width + 8 and cy - 8 <= py <= cy + height + 8 for px, py in data
      )

    lx, ly = min(corners, key=covered)  # The first corner (top right) wins ties.
    draw.rectangle([lx, ly, lx + width, ly + height], fill="white", outline=GREY)
    for row, (i, s) in enumerate(labelled):
      color = s.color or COLORS[i % len(COLORS)]
      cy = ly + 11 + 18 * row
      if s.style == "points":
        draw.ellipse([lx + 12, cy - 3, lx + 18, cy + 3], fill=color)
      else:
        draw.line([(lx + 6, cy), (lx + 24, cy)], fill=color, width=2)
      draw.text((lx + 30, cy), s.label, fill="black", font=small, anchor="lm")


def line_charts(panels: Sequence[Panel], path: str, panel_size: tuple[int, int] = (560, 400)):
  """Draws ``panels`` side by side into the PNG ``path``."""
  width, height = panel_size
  image = Image.new("RGB", (width * len(panels), height), "white")
  for index, panel in enumerate(panels):
    _draw_panel(image, (index * width, 0, (index + 1) * width, height), panel)
  image.save(path)


def image_grid(
  images: np.ndarray,
  captions: Sequence[Sequence[str]],
  colors: Sequence[Sequence[str]],
  path: str,
  title: str = "",
  row_labels: Sequence[str] = (),
  scale: int = 3,
) -> None:
  """Draws uint8 images [R, C, H, W, ch] as a grid with a caption under each cell.

  ``captions[r][c]`` and ``colors[r][c]`` label cell (r, c); an empty caption
  leaves the cell without text. ``row_labels`` name the rows on the left.
  """
  rows, cols, h, w, ch = images.shape
  cell_w, cell_h = w * scale + 16, h * scale + 24
  margin_left = 90 if row_labels else 8
  top = 34 if title else 8
  title_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font(15)))
  width = max(margin_left + cols * cell_w + 8, title_width + 20)
  canvas = Image.new("RGB", (width, top + rows * cell_h + 8), "white")
  draw = ImageDraw.Draw(canvas)
  small = font(12)
  if title:
    draw.text((canvas.width / 2, 8), title, fill="black", font=font(15), anchor="mt")
  for r in range(rows):
    if r < len(row_labels):
      draw.text((6, top + r * cell_h + h * scale / 2), row_labels[r], fill="black", font=small)
    for c in range(cols):
      pixels = images[r, c]
      mode = "L" if ch == 1 else "RGB"
      cell = Image.fromarray(pixels[..., 0] if ch == 1 else pixels, mode=mode)
      cell = cell.resize((w * scale, h * scale), Image.Resampling.NEAREST)
      x, y = margin_left + c * cell_w, top + r * cell_h
      canvas.paste(cell.convert("RGB"), (x, y))
      color = colors[r][c]
      draw.rectangle([x - 1, y - 1, x + w * scale, y + h * scale], outline=color, width=2)
      if captions[r][c]:
        draw.text(
          (x + w * scale / 2, y + h * scale + 3),
          captions[r][c],
          fill=color,
          font=small,
          anchor="mt",
        )
  canvas.save(path)
