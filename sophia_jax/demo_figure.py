"""The demo's figure, drawn with PIL (no plotting dependency): held-out pass@1 per setting, and
the caption-reward histogram split by whether the caption describes its image exactly."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, PANEL = 1100, 440, 520
BAR, EXACT, WRONG, INK, GRID = (70, 110, 200), (60, 160, 90), (210, 90, 70), (30, 30, 30), (225, 225, 225)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed size
        return ImageFont.load_default()


def _axes(pen, left: int, top: int, width: int, height: int, ymax: float, ticks: int, fmt, font) -> None:
    for i in range(ticks + 1):
        y = top + height - height * i / ticks
        pen.line([(left, y), (left + width, y)], fill=GRID)
        pen.text((left - 6, y), fmt(ymax * i / ticks), fill=INK, font=font, anchor="rm")
    pen.line([(left, top), (left, top + height), (left + width, top + height)], fill=INK)


def _bars(pen, rows, left, top, width, height, font) -> None:
    pen.text((left + width / 2, top - 36), "held-out pass@1", fill=INK, font=_font(18), anchor="mm")
    _axes(pen, left, top, width, height, 1.0, 5, lambda v: f"{100 * v:.0f}%", font)
    slot = width / max(len(rows), 1)
    for i, row in enumerate(rows):
        x = left + slot * i + slot * 0.18
        label = row["label"].replace("SOPHIA w/o", "w/o").lstrip("+ ")
        pen.text((x + slot * 0.32, top + height + 14), label, fill=INK, font=font, anchor="mm")
        if row["pass_at_1"] is None:
            pen.text((x + slot * 0.32, top + height - 12), "n/a", fill=INK, font=font, anchor="mm")
            continue
        y = top + height * (1 - row["pass_at_1"])
        pen.rectangle([x, y, x + slot * 0.64, top + height], fill=EXACT if row["name"] == "sophia" else BAR)
        pen.text((x + slot * 0.32, y - 10), f"{100 * row['pass_at_1']:.1f}%", fill=INK, font=font, anchor="mm")


def _histogram(pen, histogram, left, top, width, height, font) -> None:
    pen.text((left + width / 2, top - 36), "caption rewards of (question, caption) pairs", fill=INK, font=_font(18),
             anchor="mm")
    keys = sorted(histogram, key=float)
    ymax = max((sum(histogram[k]) for k in keys), default=1) or 1
    _axes(pen, left, top, width, height, ymax, 4, lambda v: f"{v:.0f}", font)
    slot = width / max(len(keys), 1)
    for i, key in enumerate(keys):
        exact, wrong = histogram[key]
        x0, x1 = left + slot * i + slot * 0.15, left + slot * (i + 1) - slot * 0.15
        y_exact = top + height * (1 - exact / ymax)
        y_all = top + height * (1 - (exact + wrong) / ymax)
        pen.rectangle([x0, y_exact, x1, top + height], fill=EXACT)
        pen.rectangle([x0, y_all, x1, y_exact], fill=WRONG)
        pen.text(((x0 + x1) / 2, top + height + 14), f"{float(key):.2f}", fill=INK, font=font, anchor="mm")
    for j, (colour, text) in enumerate(((EXACT, "caption exact"), (WRONG, "caption wrong"))):
        x = left + width / 2 - 110 + 120 * j
        pen.rectangle([x, top - 17, x + 12, top - 5], fill=colour)
        pen.text((x + 17, top - 11), text, fill=INK, font=font, anchor="lm")


def draw_figure(path: str, rows: list[dict], histogram: dict[str, list[int]]) -> str:
    """rows: the results table rows (label, name, pass_at_1); histogram: reward -> [exact, wrong]."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    font = _font(13)
    _bars(pen, rows, 60, 60, PANEL - 80, HEIGHT - 130, font)
    _histogram(pen, histogram, PANEL + 90, 60, WIDTH - PANEL - 120, HEIGHT - 130, font)
    image.save(path)
    return path
