"""The procedural scene renderer behind the synthetic dataset (:class:`faseg.model.data.synthetic.SyntheticDataset`).

:class:`Scene` draws one outdoor scene of the 10 :data:`SYNTHETIC_CLASSES` from a numpy random generator:
a tilted horizon between sky and ground (grass or sand, with patches, a lake or sea band and a road in
perspective), then walls and trees near the horizon, then vehicles, poles (+ wires) and balls far to near,
then illumination and sensor noise. ``Scene(rng, H, W).render()`` returns the float32 RGB image in [0, 1]
and the uint8 label map. Numpy only, a few milliseconds per 256×256 image; object sizes are tuned at 256 px
and scale with the image.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "Scene"]

SYNTHETIC_CLASSES = ["sky", "grass", "road", "wall", "water", "sand", "tree", "vehicle", "pole", "ball"]
SYNTHETIC_PALETTE = [
    (120, 170, 240),  # sky
    (60, 180, 60),  # grass
    (128, 64, 128),  # road
    (180, 90, 60),  # wall
    (20, 80, 200),  # water
    (230, 200, 120),  # sand
    (20, 100, 20),  # tree
    (230, 30, 30),  # vehicle
    (255, 230, 0),  # pole
    (255, 0, 255),  # ball
]
SKY, GRASS, ROAD, WALL, WATER, SAND, TREE, VEHICLE, POLE, BALL = range(len(SYNTHETIC_CLASSES))


@functools.lru_cache(maxsize=64)
def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothstep interpolation, ``n_in`` control points → ``n_out`` pixels: (left index, right weight)."""
    t = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(t).astype(np.int64), n_in - 2)
    f = t - i0
    return i0, (f * f * (3.0 - 2.0 * f)).astype(np.float32)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, h in [0, 1), s and v in [0, 1] → float32 RGB in [0, 1]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32)


class Scene:
    """Renders one synthetic scene; a fresh instance per sample. Images are float32 RGB in [0, 1]."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng = rng
        self.h, self.w = height, width
        self.s = min(height, width) / 256.0  # object sizes are tuned at 256 px and scale with the image
        self.yy = np.arange(height, dtype=np.float32)[:, None]  # (H, 1)
        self.xx = np.arange(width, dtype=np.float32)[None, :]  # (1, W)
        self.image = np.empty((height, width, 3), dtype=np.float32)
        self.label = np.empty((height, width), dtype=np.uint8)

    # -- helpers --------------------------------------------------------------------------------------

    def noise(self, cells_y: int, cells_x: int | None = None) -> np.ndarray:
        """Smooth value noise ``(H, W)``, zero mean, unit-ish std, with ``cells`` features per side."""
        cells_x = cells_y if cells_x is None else cells_x
        grid = self.rng.standard_normal((cells_y + 1, cells_x + 1), dtype=np.float32)
        # Separable interpolation by gathers, not matmuls: tiny BLAS calls spin up threads and cost more.
        iy, fy = _interp_weights(self.h, cells_y + 1)
        ix, fx = _interp_weights(self.w, cells_x + 1)
        rows = grid[iy] + (grid[iy + 1] - grid[iy]) * fy[:, None]  # (H, cx + 1)
        return rows[:, ix] + (rows[:, ix + 1] - rows[:, ix]) * fx  # (H, W)

    def paint(self, mask: np.ndarray, texture: np.ndarray, cls: int, box=None) -> None:
        """Paints ``texture`` where ``mask`` holds (later paint occludes); ``box`` = (y0, y1, x0, x1)."""
        y0, y1, x0, x1 = box if box is not None else (0, self.h, 0, self.w)
        img = self.image[y0:y1, x0:x1]
        np.copyto(img, np.broadcast_to(texture, img.shape), where=mask[..., None])  # faster than img[mask]
        np.copyto(self.label[y0:y1, x0:x1], np.uint8(cls), where=mask)

    def box(self, y0: float, y1: float, x0: float, x1: float):
        """Integer clip of a float box, plus the coordinate grids inside it (or None if empty)."""
        iy0, iy1 = max(0, math.floor(y0)), min(self.h, math.ceil(y1) + 1)
        ix0, ix1 = max(0, math.floor(x0)), min(self.w, math.ceil(x1) + 1)
        if iy0 >= iy1 or ix0 >= ix1:
            return None
        return (iy0, iy1, ix0, ix1), self.yy[iy0:iy1], self.xx[:, ix0:ix1]

    def jitter(self, rgb, amount: float = 0.06) -> np.ndarray:
        return np.clip(np.asarray(rgb, np.float32) + self.rng.uniform(-amount, amount, 3), 0, 1).astype(np.float32)

    # -- background: sky and ground -------------------------------------------------------------------

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        self.horizon = rng.uniform(0.25, 0.6) * self.h
        self.tilt = rng.uniform(-0.08, 0.08)
        horizon_line = self.horizon + self.tilt * (self.xx - self.w / 2)  # (1, W)
        self.ground = self.yy > horizon_line  # (H, W)
        self.sky(horizon_line)
        self.ground_regions()

        if rng.random() < 0.6:
            for _ in range(rng.integers(1, 4)):
                self.wall()
        if rng.random() < 0.6:
            self.tree_texture = self.noise(int(rng.integers(20, 36)))
            for _ in range(rng.integers(1, 4)):
                self.tree()
        # Foreground objects are drawn far to near (by their bottom edge), so nearer ones occlude.
        objects: list[tuple[float, Callable[[], None]]] = []
        if rng.random() < 0.6:
            for _ in range(rng.integers(1, 4)):
                objects.append(self.vehicle())
        if rng.random() < 0.85:
            objects.extend(self.poles())
        if rng.random() < 0.85:
            for _ in range(rng.integers(2, 9)):
                objects.append(self.ball())
        for _, draw in sorted(objects, key=lambda o: o[0]):
            draw()
        self.illuminate()
        return self.image, self.label

    def sky(self, horizon_line: np.ndarray) -> None:
        rng = self.rng
        t = np.clip(self.yy / np.maximum(horizon_line, 1.0), 0, 1)[..., None]  # (H, W, 1): 0 top, 1 horizon
        overcast = rng.random() < 0.25
        if overcast:
            top = self.jitter((0.55, 0.6, 0.68), 0.08)
            bottom = self.jitter((0.8, 0.82, 0.85), 0.06)
        else:
            top = _hsv_to_rgb(rng.uniform(0.55, 0.64), rng.uniform(0.45, 0.75), rng.uniform(0.7, 0.95))
            bottom = _hsv_to_rgb(rng.uniform(0.52, 0.6), rng.uniform(0.1, 0.3), rng.uniform(0.88, 1.0))
        clouds = np.clip(self.noise(3, 5) * rng.uniform(0.3, 0.7) + rng.uniform(-0.4, 0.2), 0, 1)[..., None]
        sky = top + (bottom - top) * t  # (H, W, 3)
        sky += (np.float32(0.95) - sky) * clouds  # blend towards white clouds
        self.image[:] = sky
        self.label[:] = SKY

    def ground_regions(self) -> None:
        rng = self.rng
        g = self.ground
        base = GRASS if rng.random() < 0.6 else SAND
        self.paint(g, self.texture(base), base)
        if rng.random() < 0.5:  # irregular patches of another ground class
            other = int(rng.choice([c for c in (GRASS, SAND, WATER) if c != base]))
            patch = g & (self.noise(2, 3) > rng.uniform(0.2, 0.7))
            self.paint(patch, self.texture(other), other)
        if rng.random() < 0.4:
            self.water_body()
        if rng.random() < 0.6:
            self.road()

    def water_body(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:  # sea / river band right below the horizon, with a wavy far shore
            depth = rng.uniform(0.08, 0.25) * self.h
            shore = (
                self.horizon
                + self.tilt * (self.xx - self.w / 2)
                + depth * (1 + 0.3 * np.sin(self.xx / self.w * rng.uniform(3, 9) + rng.uniform(0, 6.28)))
            )
            mask = self.ground & (self.yy < shore)
        else:  # lake: an ellipse with a wobbly edge
            cy = rng.uniform(self.horizon + 0.1 * (self.h - self.horizon), self.h)
            cx = rng.uniform(0, self.w)
            ry, rx = rng.uniform(0.08, 0.2) * self.h, rng.uniform(0.15, 0.4) * self.w
            ang = np.arctan2((self.yy - cy) / ry, (self.xx - cx) / rx)
            wob = 1 + 0.15 * np.sin(3 * ang + rng.uniform(0, 6.28)) + 0.08 * np.sin(5 * ang + rng.uniform(0, 6.28))
            mask = self.ground & (((self.yy - cy) / ry) ** 2 + ((self.xx - cx) / rx) ** 2 < wob**2)
        self.paint(mask, self.texture(WATER), WATER)

    def road(self) -> None:
        rng = self.rng
        vx = rng.uniform(0.2, 0.8) * self.w  # vanishing point on the horizon
        bx = vx + rng.uniform(-0.4, 0.4) * self.w  # centre of the road at the bottom edge
        half = rng.uniform(0.2, 0.5) * self.w
        t = np.clip((self.yy - self.horizon) / (self.h - self.horizon), 0, 1)  # (H, 1) perspective depth
        centre = vx + (bx - vx) * t
        dist = np.abs(self.xx - centre)  # (H, W)
        mask = self.ground & (dist < half * t + 0.5)
        tex = self.texture(ROAD)
        if rng.random() < 0.7:  # dashed centre line, shrinking with distance
            dashes = np.sin(rng.uniform(3, 6) / (t + 0.08) + rng.uniform(0, 6.28)) > 0
            line = (dist < 0.025 * half * t + 0.3) & dashes
            colour = self.jitter((0.9, 0.9, 0.85) if rng.random() < 0.6 else (0.9, 0.75, 0.2), 0.05)
            tex = np.where(line[..., None], colour, tex)
        self.paint(mask, tex, ROAD)

    def texture(self, cls: int) -> np.ndarray:
        """A full-image ``(H, W, 3)`` texture of a stuff class, with per-image colour variation."""
        rng, h, w = self.rng, self.h, self.w
        if cls == GRASS:
            # green with short vertical blade streaks and patchy tone
            base = _hsv_to_rgb(rng.uniform(0.2, 0.33), rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.7))
            n = max(1, round(3 * self.s))
            streak = np.repeat(rng.standard_normal((h // n + 1, w), dtype=np.float32), n, axis=0)[:h]
            tone = 1 + 0.22 * streak + 0.15 * self.noise(4)
            return base * tone[..., None]
        if cls == SAND:
            # pale beige, fine grain and soft dunes
            base = _hsv_to_rgb(rng.uniform(0.09, 0.14), rng.uniform(0.25, 0.45), rng.uniform(0.75, 0.92))
            grain = rng.standard_normal((h, w), dtype=np.float32)
            tone = 1 + 0.07 * grain + 0.1 * self.noise(3) + 0.05 * np.sin(self.yy * rng.uniform(0.2, 0.4))
            return base * tone[..., None]
        if cls == ROAD:
            # neutral grey asphalt with coarse speckle and wear
            g = rng.uniform(0.28, 0.5)
            base = np.array([g, g, g * rng.uniform(1.0, 1.08)], np.float32)
            speckle = rng.standard_normal((h // 2 + 1, w // 2 + 1), dtype=np.float32)
            speckle = np.repeat(np.repeat(speckle, 2, 0), 2, 1)[:h, :w]
            tone = 1 + 0.1 * speckle + 0.1 * self.noise(3)
            return base * tone[..., None]
        if cls == WATER:
            # blue-green with horizontal ripples that warp, and a lighter far edge
            base = _hsv_to_rgb(rng.uniform(0.5, 0.6), rng.uniform(0.5, 0.85), rng.uniform(0.45, 0.7))
            period = rng.uniform(3.0, 7.0) * self.s
            ripple = np.sin(2 * np.pi * (self.yy / period + 0.8 * self.noise(2, 4)) + 0.02 * self.xx)
            tone = 1 + 0.15 * ripple + 0.1 * self.noise(3)
            return base * tone[..., None]
        raise ValueError(f"no stuff texture for class {cls}")

    # -- things ----------------------------------------------------------------------------------------

    def wall(self) -> None:
        """A brick wall: staggered bricks with per-brick colour and light mortar lines."""
        rng = self.rng
        x0 = rng.uniform(-0.1, 0.9) * self.w
        x1 = x0 + rng.uniform(0.15, 0.45) * self.w
        top = rng.uniform(0.05 * self.h, max(0.06 * self.h, self.horizon - 0.08 * self.h))
        bottom = min(self.h, self.horizon + rng.uniform(0.0, 0.15) * self.h)
        b = self.box(top, bottom, x0, x1)
        if b is None:
            return
        box, yy, xx = b
        bh = rng.uniform(5, 10) * self.s
        bw = bh * rng.uniform(2.0, 3.0)
        row = np.floor(yy / bh)
        xs = xx + (row % 2) * bw / 2
        col = np.floor(xs / bw)
        mortar = ((yy % bh) < 1.3 * self.s) | ((xs % bw) < 1.3 * self.s)
        hue = rng.uniform(0.0, 0.08)
        brick = _hsv_to_rgb(hue, rng.uniform(0.45, 0.7), rng.uniform(0.5, 0.75))
        table = rng.uniform(0.8, 1.2, size=(17, 13)).astype(np.float32)
        tone = table[(row % 17).astype(np.int64), (col % 13).astype(np.int64)]
        tex = brick * tone[..., None]
        tex = np.where(mortar[..., None], self.jitter((0.75, 0.72, 0.68), 0.05), tex)
        mask = np.ones(tex.shape[:2], dtype=bool) & (yy >= top) & (yy <= bottom) & (xx >= x0) & (xx <= x1)
        self.paint(mask, tex, WALL, box)

    def tree(self) -> None:
        """A blobby dark-green crown (union of discs, mottled) on a brown trunk."""
        rng = self.rng
        cx = rng.uniform(0, self.w)
        r = rng.uniform(0.06, 0.14) * self.h
        cy = rng.uniform(self.horizon - 0.25 * self.h, self.horizon + 0.02 * self.h)
        ground_y = min(self.h, self.horizon + rng.uniform(0.02, 0.15) * self.h)
        tw = max(3.0, r * rng.uniform(0.15, 0.25))
        b = self.box(cy - 1.8 * r, ground_y, cx - 1.8 * r, cx + 1.8 * r)
        if b is None:
            return
        box, yy, xx = b
        trunk = (np.abs(xx - cx) < tw / 2) & (yy >= cy) & (yy <= ground_y)
        crown = np.zeros(trunk.shape, dtype=bool)
        for _ in range(rng.integers(4, 8)):
            ox, oy = rng.uniform(-0.8, 0.8, 2) * r
            rr = rng.uniform(0.45, 0.9) * r
            crown |= (xx - cx - ox) ** 2 + (yy - cy - oy) ** 2 < rr * rr
        y0, y1, x0, x1 = box
        leaf = _hsv_to_rgb(rng.uniform(0.22, 0.36), rng.uniform(0.55, 0.85), rng.uniform(0.25, 0.42))
        mottle = np.clip(1 + 0.35 * self.tree_texture[y0:y1, x0:x1], 0.4, 1.6)
        bark = self.jitter((0.36, 0.24, 0.14), 0.05)
        tex = np.where(
            crown[..., None],
            leaf * mottle[..., None],
            bark * (0.85 + 0.3 * (np.abs(xx - cx) < tw / 4))[..., None],
        )
        self.paint(crown | trunk, tex.astype(np.float32), TREE, box)

    def vehicle(self) -> tuple[float, Callable[[], None]]:
        """A car seen from the side: shaded body of any colour, dark glass cabin, black wheels."""
        rng = self.rng
        bottom = rng.uniform(self.horizon + 0.12 * (self.h - self.horizon), self.h + 0.05 * self.h)
        near = (bottom - self.horizon) / max(self.h - self.horizon, 1.0)  # perspective: 0 far .. 1 near
        width = max(24 * self.s, rng.uniform(60, 110) * self.s * near)
        body_h = width * rng.uniform(0.22, 0.3)
        cabin_h = body_h * rng.uniform(0.6, 0.85)
        x0 = rng.uniform(-0.2 * width, self.w - 0.8 * width)
        wheel_r = body_h * rng.uniform(0.35, 0.45)
        if rng.random() < 0.35:  # achromatic: white / silver / black
            v = rng.choice([0.9, 0.65, 0.12])
            colour = self.jitter((v, v, v), 0.04)
        else:
            colour = _hsv_to_rgb(rng.random(), rng.uniform(0.55, 0.95), rng.uniform(0.45, 0.9))
        inset0, inset1 = rng.uniform(0.15, 0.3), rng.uniform(0.2, 0.35)

        def draw() -> None:
            body_top, body_bot = bottom - wheel_r - body_h, bottom - wheel_r
            b = self.box(body_top - cabin_h, bottom, x0, x0 + width)
            if b is None:
                return
            box, yy, xx = b
            u = (xx - x0) / width  # (1, w) 0..1 along the car
            body = (yy >= body_top) & (yy <= body_bot) & (u >= 0) & (u <= 1)
            # cabin: a trapezoid on top of the body
            v = np.clip((body_top - yy) / cabin_h, 0, 1)  # 0 at the roof line base .. 1 at the roof
            c0, c1 = inset0 + 0.1 * v, 1 - inset1 - 0.1 * v
            cabin = (yy < body_top) & (yy >= body_top - cabin_h) & (u >= c0) & (u <= c1)
            wheels = np.zeros(body.shape, dtype=bool)
            for wu in (0.2, 0.8):
                wx = x0 + wu * width
                wheels |= (xx - wx) ** 2 + (yy - body_bot) ** 2 < wheel_r**2
            shade = 1.15 - 0.35 * np.clip((yy - body_top) / body_h, 0, 1)  # lit from above
            tex = np.broadcast_to((colour * shade[..., None]).astype(np.float32), (*body.shape, 3)).copy()
            glass = np.float32(0.6) * self.jitter((0.25, 0.3, 0.38), 0.05) * (1 + 0.4 * v)[..., None]
            tex = np.where(cabin[..., None], glass, tex)
            window_frame = cabin & ((u < c0 + 0.02) | (u > c1 - 0.02) | (yy < body_top - cabin_h + 1.5 * self.s))
            tex = np.where(window_frame[..., None], colour, tex)
            tex = np.where(wheels[..., None], np.float32(0.08), tex)
            self.paint(body | cabin | wheels, tex, VEHICLE, box)

        return bottom, draw

    def poles(self) -> list[tuple[float, Callable[[], None]]]:
        """1–4 thin metal poles (cylinder shading, optional cross-arm), sometimes linked by sagging wires."""
        rng = self.rng
        out = []
        tops = []
        for _ in range(rng.integers(1, 5)):
            x = rng.uniform(0.02, 0.98) * self.w
            top = rng.uniform(0.0, max(0.02 * self.h, self.horizon - 0.12 * self.h))
            bottom = rng.uniform(self.horizon + 0.05 * (self.h - self.horizon), self.h)
            pw = rng.uniform(3.0, 7.0) * self.s
            slant = rng.uniform(-0.04, 0.04)
            v = rng.uniform(0.3, 0.65)
            colour = self.jitter((v, v, v * rng.uniform(0.95, 1.1)), 0.03)
            arm = rng.uniform(0.04, 0.1) * self.w * rng.choice([-1, 1]) if rng.random() < 0.5 else 0.0
            tops.append((x, top))
            out.append((bottom, functools.partial(self._pole, x, top, bottom, pw, slant, colour, arm)))
        if len(tops) >= 2 and rng.random() < 0.45:
            tops.sort()
            th = rng.uniform(2.0, 3.0) * self.s
            sag = rng.uniform(0.02, 0.08) * self.h
            for (xa, ya), (xb, yb) in itertools.pairwise(tops):
                out.append((max(ya, yb) + 1e9, functools.partial(self._wire, xa, ya + 3, xb, yb + 3, th, sag)))
        return out

    def _pole(self, x, top, bottom, pw, slant, colour, arm) -> None:
        dx = slant * (bottom - top)
        b = self.box(top, bottom, min(x, x + dx, x + arm) - pw, max(x, x + dx, x + arm) + pw)
        if b is None:
            return
        box, yy, xx = b
        centre = x + slant * (yy - top)
        d = (xx - centre) / (pw / 2)  # -1..1 across the pole
        shaft = (np.abs(d) <= 1) & (yy >= top) & (yy <= bottom)
        tex = colour * (0.55 + 0.6 * np.sqrt(np.clip(1 - d * d, 0, 1)))[..., None]  # cylinder shading
        mask = shaft
        if arm:
            bar = (np.abs(yy - top - 2 * pw) <= max(1.5, pw / 3)) & ((xx - x) * np.sign(arm) >= 0)
            bar &= np.abs(xx - x) <= abs(arm)
            tex = np.where((bar & ~shaft)[..., None], colour * 0.85, tex)
            mask = mask | bar
        self.paint(mask, tex.astype(np.float32), POLE, box)

    def _wire(self, xa, ya, xb, yb, th, sag) -> None:
        b = self.box(min(ya, yb), max(ya, yb) + sag + th, xa, xb)
        if b is None:
            return
        box, yy, xx = b
        u = (xx - xa) / max(xb - xa, 1.0)
        curve = ya + (yb - ya) * u + 4 * sag * u * (1 - u)
        mask = (np.abs(yy - curve) <= th / 2) & (u >= 0) & (u <= 1)
        self.paint(mask, np.array([0.12, 0.12, 0.13], np.float32), POLE, box)

    def ball(self) -> tuple[float, Callable[[], None]]:
        """A small shaded sphere of a saturated colour (balloons in the sky, balls on the ground)."""
        rng = self.rng
        r = rng.uniform(4.0, 11.0) * self.s
        cx = rng.uniform(0, self.w)
        cy = rng.uniform(0.05 * self.h, self.h)
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0))
        lx, ly = rng.uniform(-0.6, 0.6), rng.uniform(-0.8, -0.3)  # light from above

        def draw() -> None:
            b = self.box(cy - r, cy + r, cx - r, cx + r)
            if b is None:
                return
            box, yy, xx = b
            dx, dy = (xx - cx) / r, (yy - cy) / r
            rr = dx * dx + dy * dy
            mask = rr <= 1
            nz = np.sqrt(np.clip(1 - rr, 0, 1))
            lam = np.clip(dx * lx + dy * ly + nz * 0.6, 0, None)  # Lambert
            spec = np.clip(lam, 0, 1) ** 12
            tex = colour * (0.3 + 0.8 * lam)[..., None] + 0.5 * spec[..., None]
            self.paint(mask, tex.astype(np.float32), BALL, box)

        return cy + r, draw

    # -- illumination and sensor ------------------------------------------------------------------------

    def illuminate(self) -> None:
        rng, img = self.rng, self.image
        light = np.ones((self.h, self.w), np.float32)
        if rng.random() < 0.3:  # a soft-edged cast shadow over part of the scene
            shadow = np.clip((self.noise(2, 3) - rng.uniform(0.3, 0.8)) * 4, 0, 1)
            light *= 1 - rng.uniform(0.25, 0.45) * shadow
        theta, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.35)  # lighting gradient
        xn, yn = self.xx / self.w * 2 - 1, self.yy / self.h * 2 - 1
        light *= 1 + amp * (np.cos(theta) * xn + np.sin(theta) * yn)
        gain = rng.uniform(0.65, 1.3)
        cast = rng.uniform(0.92, 1.08, 3).astype(np.float32)
        img *= (light * gain)[..., None] * cast
        np.clip(img, 0, 1, out=img)
        gamma = rng.uniform(0.75, 1.35)
        np.power(img, gamma, out=img)
        # Sensor noise: triangular (sum of two uniform bytes), ~5x cheaper than standard_normal here.
        n = img.size
        tri = np.frombuffer(rng.bytes(2 * n), dtype=np.uint8).astype(np.int16)
        tri = (tri[:n] + tri[n:] - 255).astype(np.float32).reshape(img.shape)  # std ≈ 104
        img += tri * np.float32(rng.uniform(0.005, 0.03) / 104.0)
