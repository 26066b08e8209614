"""A one-picture overview of the findings for the engineer who checks a scan by hand.

Why a picture: ``findings.json`` says how much lung and lesion the analysis found, not whether it
found them in the right place. One PNG with a few axial and coronal sections, the lung outlines,
the class activation map and the lesion outlines shows at a glance a segmentation that leaks,
a swapped side or a heat map on the wrong lung. ``predict`` adds a band of the same sections per
CAM level (:mod:`inference.multilevel_cam`), to compare what each level of the network responds
to. Pillow and numpy only (no plotting library).

Display conventions: axial sections in the radiological view (patient right on image left,
anterior at the top), coronal sections with the head at the top; every section keeps its
physical aspect ratio, and all share one millimetre scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inference.grid import VoxelGrid, bounding_box
from inference.resampling import window
from inference.types import CTVolume, Findings, Lesion

AXIAL, CORONAL = 0, 1
"""Axes (after reordering to axial order) that the sections cut across."""
VIEW_NAMES = {AXIAL: "axial", CORONAL: "coronal"}
PANEL_COUNTS = {AXIAL: 3, CORONAL: 2}
SCREEN_DIRECTION = {0: (2, -1), 1: (1, 1), 2: (0, 1)}
"""Per array axis (axial order): the LPS coordinate it runs along on screen (down or right) and
the sign it must run with: slices head at the top (-z), rows anterior at the top (+y), columns
patient right on the left (+x)."""

PANEL_PX = 384
"""Longest physical side among the sections, in pixels; the others share its mm scale."""
GAP_PX = 4
CAPTION_PX = 22
CAM_MAX_ALPHA = 0.5
"""Opacity of the heat map where the activation is 1 (it fades with the activation)."""
LUNG_COLOUR = (0, 170, 255)
LESION_COLOUR = (0, 255, 0)
"""Green: apart from both the blue lung outline and the red-yellow heat map."""
TEXT_COLOUR = (255, 255, 255)
KEY_IMAGE_FONT_PX = 15
KEY_IMAGE_MIN_WIDTH_PX = 512
"""Key images are drawn at the CT's own pixel size, but no narrower than this (the caption needs room)."""


@dataclass(frozen=True)
class Panel:
    """Where one section lies in the overview: ``box`` is (left, top, right, bottom) in pixels.

    ``index`` is the plane's index along the axis it cuts, the array axis closest to patient z
    (axial) or y (coronal): for a series of axial slices, the slice or row index. ``level`` is
    the title of the heat map's band (a CAM level), empty when there is one band.
    """

    view: str
    index: int
    box: tuple[int, int, int, int]
    level: str = ""


@dataclass(frozen=True)
class _Section:
    """One plane of every layer, oriented for display, with its pixel size in mm."""

    hu: np.ndarray
    lungs: np.ndarray
    lesions: np.ndarray | None
    cam: np.ndarray | None
    row_mm: float
    col_mm: float

    @property
    def extent_mm(self) -> tuple[float, float]:
        """(width, height) in mm."""
        rows, cols = self.hu.shape
        return cols * self.col_mm, rows * self.row_mm

    def size_px(self, scale: float) -> tuple[int, int]:
        """(width, height) at ``scale`` pixels per mm."""
        width, height = self.extent_mm
        return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class _Scene:
    """The volume and its maps with axes reordered to (axial slice, row, column).

    Reordering first (as the analysis does) keeps the views right for series not stored as
    axial slices; for an axial series it is the identity.
    """

    hu: np.ndarray
    lungs: np.ndarray
    lesions: np.ndarray | None
    grid: VoxelGrid
    order: tuple[int, int, int]
    """The volume's axes in axial order (how every map given later is reordered)."""

    @classmethod
    def of(cls, volume: CTVolume, findings: Findings) -> _Scene:
        grid = VoxelGrid.of(volume)
        order = grid.axial_order()
        return cls(
            hu=np.transpose(volume.hu, order),
            lungs=np.transpose(findings.lung_labels, order),
            lesions=None if findings.lesion_labels is None else np.transpose(findings.lesion_labels, order),
            grid=grid.permuted(order),
            order=order,
        )

    def reorder(self, array: np.ndarray | None) -> np.ndarray | None:
        """A map in the volume's axis order (a heat map) in the scene's."""
        return None if array is None else np.transpose(array, self.order)

    def section(self, axis: int, index: int, cam: np.ndarray | None = None) -> _Section:
        """The plane ``index`` across ``axis``, flipped into the display conventions, with the
        heat map ``cam`` (in the scene's axis order, :meth:`reorder`)."""
        rows_axis, cols_axis = (a for a in range(3) if a != axis)
        flips = tuple(
            dim
            for dim, a in enumerate((rows_axis, cols_axis))
            if self.grid.steps[a, SCREEN_DIRECTION[a][0]] * SCREEN_DIRECTION[a][1] < 0
        )

        def plane(array: np.ndarray) -> np.ndarray:
            return np.flip(np.take(array, index, axis=axis), axis=flips)

        spacing = self.grid.spacing
        return _Section(
            hu=plane(self.hu),
            lungs=plane(self.lungs),
            lesions=None if self.lesions is None else plane(self.lesions),
            cam=None if cam is None else plane(cam),
            row_mm=float(spacing[rows_axis]),
            col_mm=float(spacing[cols_axis]),
        )

    def position_mm(self, axis: int, index: int) -> float:
        """Patient coordinate (the one ``axis`` runs along) at the centre of plane ``index``."""
        coordinate = SCREEN_DIRECTION[axis][0]
        return float(self.grid.origin[coordinate] + index * self.grid.steps[axis, coordinate])

    def label(self, axis: int, index: int) -> str:
        """The section's caption: view, the coordinate it cuts and where, e.g. "axial z 12 mm"."""
        return f"{VIEW_NAMES[axis]} {'xyz'[SCREEN_DIRECTION[axis][0]]} {self.position_mm(axis, index):.0f} mm"


@dataclass(frozen=True)
class _Tile:
    """A rendered section and where it goes."""

    panel: Panel
    pixels: np.ndarray
    label: str


def caption(findings: Findings) -> str:
    """One line: the probability and the call, or why there is none."""
    if findings.not_assessable:
        return f"not assessable: {findings.not_assessable}"
    result = findings.classification
    if result is None:
        return "no classification"
    call = "positive" if result.positive else "negative"
    return (
        f"COVID-19 probability {result.probability:.3f}: {call} (threshold {result.threshold:.2f}); "
        f"{len(findings.lesions)} lesion(s); lungs {findings.lungs.total_ml:.0f} ml"
    )


def write_overview(
    volume: CTVolume, findings: Findings, path: Path, levels: Sequence[tuple[str, np.ndarray]] = ()
) -> None:
    image, _ = render_overview(volume, findings, levels)
    image.save(path)


def render_overview(
    volume: CTVolume, findings: Findings, levels: Sequence[tuple[str, np.ndarray]] = ()
) -> tuple[Image.Image, tuple[Panel, ...]]:
    """The overview picture and where each section lies in it.

    A band of sections per heat map: an axial row through the primary and then the largest
    lesions, filled up with sections spread through the lungs, and below it a coronal row chosen
    the same way. ``levels`` (title, uint8 map like ``findings.cam``) gives one titled band per
    map, all on the same sections so that the maps can be compared; without, one band shows
    ``findings.cam``.
    """
    scene = _Scene.of(volume, findings)
    chosen = _chosen_planes(scene, findings.lesions)
    scale = PANEL_PX / max(max(scene.section(axis, index).extent_mm) for axis, index in chosen)
    texts = [((4, 4), caption(findings))]
    tiles: list[_Tile] = []
    top = CAPTION_PX
    for title, cam in levels or (("", findings.cam),):
        if title:
            texts.append(((4, top + 4), title))
            top += CAPTION_PX
        top = _place_band(scene, chosen, scale, title, scene.reorder(cam), top, tiles)
    return _compose(tiles, texts, top - GAP_PX), tuple(tile.panel for tile in tiles)


def _place_band(
    scene: _Scene,
    chosen: list[tuple[int, int]],
    scale: float,
    title: str,
    cam: np.ndarray | None,
    top: int,
    tiles: list[_Tile],
) -> int:
    """Renders the ``chosen`` sections with heat map ``cam`` into ``tiles``, one row per view
    from ``top`` down; returns the top of the next row."""
    for axis in (AXIAL, CORONAL):
        left, row_height = 0, 0
        for index in (index for view, index in chosen if view == axis):
            pixels = _render_section(scene.section(axis, index, cam), scale)
            height, width = pixels.shape[:2]
            panel = Panel(VIEW_NAMES[axis], index, (left, top, left + width, top + height), title)
            tiles.append(_Tile(panel, pixels, scene.label(axis, index)))
            left += width + GAP_PX
            row_height = max(row_height, height)
        top += row_height + GAP_PX
    return top


def _compose(tiles: list[_Tile], texts: list[tuple[tuple[int, int], str]], height: int) -> Image.Image:
    """The tiles pasted on black, each with its label, and the free ``texts`` (position, text)."""
    width = max(tile.panel.box[2] for tile in tiles)
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for tile in tiles:
        image.paste(Image.fromarray(tile.pixels), tile.panel.box[:2])
    labels = [((tile.panel.box[0] + 3, tile.panel.box[1] + 2), tile.label) for tile in tiles]
    for position, text in [*texts, *labels]:
        draw.text(position, text, fill=TEXT_COLOUR)
    return image


def _chosen_planes(scene: _Scene, lesions: tuple[Lesion, ...]) -> list[tuple[int, int]]:
    """(axis, index) of every section to show, axial first, each axis in index order."""
    centres = _lesion_centres(scene.lesions, lesions)
    box = bounding_box(scene.lungs > 0) or tuple(slice(0, n) for n in scene.lungs.shape)
    return [
        (axis, index)
        for axis in (AXIAL, CORONAL)
        for index in _pick([centre[axis] for centre in centres], box[axis], PANEL_COUNTS[axis])
    ]


def _lesion_centres(labels: np.ndarray | None, lesions: tuple[Lesion, ...]) -> list[tuple[int, ...]]:
    """Index centroid of each lesion, the primary first, then by decreasing volume."""
    if labels is None or not lesions:
        return []
    where = np.nonzero(labels)
    values = labels[where]
    counts = np.bincount(values)
    means = [np.bincount(values, weights=coordinate) / np.maximum(counts, 1) for coordinate in where]
    ordered = sorted(lesions, key=lambda lesion: (not lesion.primary, -lesion.volume_ml))
    return [
        tuple(round(mean[lesion.label]) for mean in means)
        for lesion in ordered
        if lesion.label < len(counts) and counts[lesion.label]
    ]


def _pick(preferred: list[int], extent: slice, count: int) -> list[int]:
    """Up to ``count`` plane indices within ``extent``: the ``preferred`` ones first (one of any
    closer than half the even spacing, so neighbouring lesions share a section), then each time
    the plane farthest from those chosen and from the ends (the middle first, then the quarters)."""
    candidates = np.arange(extent.start, extent.stop)
    gap = len(candidates) / (2 * count)
    chosen: list[int] = []
    for index in preferred:
        if len(chosen) < count and all(abs(index - other) >= gap for other in chosen):
            chosen.append(index)
    while len(chosen) < count:
        room = np.minimum(candidates + 0.5 - extent.start, extent.stop - 0.5 - candidates)
        for other in chosen:
            room = np.minimum(room, np.abs(candidates - other))
        best = int(np.argmax(room))
        if room[best] <= 0:
            break
        chosen.append(int(candidates[best]))
    return sorted(chosen)


def _render_section(section: _Section, scale: float) -> np.ndarray:
    """RGB pixels (uint8) of one section: lung-window CT, heat map in the lungs, outlines.

    The image is blended at the CT's resolution and then resized smoothly; the outlines are
    drawn afterwards on nearest-neighbour resized labels, so they stay one pixel thin and keep
    their exact colours.
    """
    width, height = section.size_px(scale)
    rgb = np.repeat(window(section.hu)[..., None], 3, axis=2)
    if section.cam is not None:
        heat = (section.cam / 255.0) * (section.lungs > 0)
        colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], axis=-1)  # red to yellow
        alpha = (CAM_MAX_ALPHA * heat)[..., None]
        rgb = (1.0 - alpha) * rgb + alpha * colour
    image = Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))
    pixels = np.array(image.resize((width, height), Image.Resampling.BILINEAR))
    for labels, colour in ((section.lungs, LUNG_COLOUR), (section.lesions, LESION_COLOUR)):
        if labels is not None:
            pixels[_outline(_resize_nearest(labels, height, width))] = colour
    return pixels


def _resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(int), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def _outline(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another value: the inner border of each label."""
    padded = np.pad(labels, 1, mode="edge")
    rows, cols = labels.shape
    differs = np.zeros(labels.shape, dtype=bool)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dr : dr + rows, dc : dc + cols] != labels
    return (labels != 0) & differs


def key_image_planes(volume: CTVolume, findings: Findings, count: int) -> list[int]:
    """Up to ``count`` axial plane indices for key images, chosen like the overview's axial row:
    through the primary and then the largest lesions, filled up with planes spread through the
    lungs (a negative scan gets those alone). For a series of axial slices, the slice indices."""
    scene = _Scene.of(volume, findings)
    centres = _lesion_centres(scene.lesions, findings.lesions)
    box = bounding_box(scene.lungs > 0) or tuple(slice(0, n) for n in scene.lungs.shape)
    return _pick([centre[AXIAL] for centre in centres], box[AXIAL], count)


def render_key_image(volume: CTVolume, findings: Findings, index: int, lines: Sequence[str]) -> np.ndarray:
    """RGB pixels (uint8, rows x columns x 3) of axial plane ``index`` with the overview's
    overlays (lung outline, heat map in the lungs, lesion outlines) and ``lines`` of text in a
    band below it: a key image, legible in any viewer without SEG support.

    The plane is drawn at the CT's own pixel size (square pixels at the finer of its two
    spacings), scaled up when narrower than `KEY_IMAGE_MIN_WIDTH_PX`.
    """
    scene = _Scene.of(volume, findings)
    section = scene.section(AXIAL, index, scene.reorder(findings.cam))
    scale = 1.0 / min(section.row_mm, section.col_mm)
    scale *= max(1.0, KEY_IMAGE_MIN_WIDTH_PX / section.size_px(scale)[0])
    pixels = _render_section(section, scale)
    font = ImageFont.load_default(size=KEY_IMAGE_FONT_PX)
    margin, line_px = 6, KEY_IMAGE_FONT_PX + 5
    wrapped = [part for text in lines for part in _wrap(text, font, pixels.shape[1] - 2 * margin)]
    band = Image.new("RGB", (pixels.shape[1], line_px * len(wrapped) + 2 * margin), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for number, text in enumerate(wrapped):
        draw.text((margin, margin + number * line_px), text, fill=TEXT_COLOUR, font=font)
    return np.concatenate([pixels, np.asarray(band)], axis=0)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word stands alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]
