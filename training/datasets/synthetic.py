"""The synthetic affect world: procedural images whose labels feed every pretext and downstream task.

Results on these images are **synthetic** and say nothing about real visual sentiment; they exist so
the whole method runs, and is tested, with no download. Sample ``i`` of split ``s`` is a pure function
of ``(seed, offset(s) + i)``: its cues are drawn from ``numpy.random.default_rng((seed, index))``.

**Cues** of one image (``size`` x ``size`` RGB, 64 px by default):

* colour (low level, what the ST model learns): palette temperature ``t`` in [-1, 1] (cool blue to warm
  orange sky, ground hue shifted from it), saturation ``s`` in [0.2, 1], brightness ``b`` in [0.3, 1];
* layout (mid level, HO): :data:`SCENES` = horizon height (high / middle / low) x ground texture
  (plain / dotted / striped / checkered), 12 scene classes;
* object (high level, HP): a shape noun of :data:`NOUNS` drawn in a state adjective of :data:`ADJECTIVES`
  and one of :data:`COLOURS`; the ANP label is ``<adjective>_<noun>`` (36 classes, VSO style), and a
  template caption describes the picture, e.g. ``"a jagged red star above a dark striped field under a
  cool sky"``.

**Emotion** (downstream; :data:`EMOTIONS` = the 8 FI classes in FI order). Each emotion is a corner of a
cube of three signs ``(valence v, arousal a, member m)``::

    amusement (+,+,+)  excitement (+,+,-)  contentment (+,-,+)  awe     (+,-,-)
    anger     (-,+,+)  fear       (-,+,-)  disgust     (-,-,+)  sadness (-,-,-)

and three scores, each mixing two levels of cues, so every teacher carries part of the answer::

    V = 2 colour_valence + adjective_valence    colour_valence = 0.6 t + 0.4 (b - 0.65) / 0.35
    A = texture_arousal + (s - 0.6) / 0.4       texture_arousal: plain -1, dotted -1/3, striped 1/3, checkered 1
    M = noun_member + horizon_member            noun_member: circle/heart/house +1, star/spike/tower -1;
                                                horizon_member: high +1, middle 0, low -1
    adjective_valence: smooth/bright/glowing +1, jagged/withered/broken -1

An emotion's probability is ``softmax_e(beta * (v_e V + a_e A + m_e M))`` (``beta`` = 1.5); ``votes``
virtual annotators (12) each draw one emotion from it, which is the label noise. The three views of the
same image: **LDL** = vote counts / ``votes``; **SLL** = the most voted emotion (ties: the more
probable one); **MLL** = every emotion with at least half the votes of the most voted one.
With the defaults, the most probable emotion matches the SLL label ~79% of the time (the label noise),
and a linear probe on the true cues reaches ~23% from colour alone, ~27% from layout alone, ~37% from
the ANP alone and ~78% from all three (chance: 12.5%).
"""
from __future__ import annotations

import colorsys
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from sentizoo.models import FI_LABELS

from .common import PathLike

__all__ = ['AffectWorld', 'Cues', 'SyntheticImages', 'SyntheticScenes', 'SyntheticANP', 'SyntheticCaptions',
           'SyntheticEmotion', 'write_image_folder', 'SCENES', 'ANPS', 'NOUNS', 'ADJECTIVES', 'COLOURS', 'EMOTIONS',
           'SPLIT_OFFSETS', 'CACHE_LIMIT']

EMOTIONS = tuple(FI_LABELS)
HORIZONS = ('high', 'middle', 'low')
_HORIZON_ROW = (0.35, 0.5, 0.65)  # horizon height as a fraction of the image from the top
_HORIZON_MEMBER = (1.0, 0.0, -1.0)
TEXTURES = ('plain', 'dotted', 'striped', 'checkered')
_TEXTURE_AROUSAL = (-1.0, -1 / 3, 1 / 3, 1.0)
SCENES = tuple(f'{h}_horizon-{t}' for h in HORIZONS for t in TEXTURES)
NOUNS = ('circle', 'heart', 'house', 'star', 'spike', 'tower')
_NOUN_MEMBER = (1.0, 1.0, 1.0, -1.0, -1.0, -1.0)
ADJECTIVES = ('smooth', 'bright', 'glowing', 'jagged', 'withered', 'broken')
_ADJECTIVE_VALENCE = (1.0, 1.0, 1.0, -1.0, -1.0, -1.0)
ANPS = tuple(f'{a}_{n}' for a in ADJECTIVES for n in NOUNS)
COLOURS = {'red': (0.85, 0.1, 0.1), 'orange': (0.95, 0.55, 0.1), 'yellow': (0.95, 0.9, 0.15),
           'green': (0.15, 0.7, 0.2), 'blue': (0.15, 0.3, 0.9), 'purple': (0.55, 0.2, 0.75),
           'white': (0.97, 0.97, 0.97), 'black': (0.05, 0.05, 0.05)}
_COLOUR_NAMES = tuple(COLOURS)
# (valence, arousal, member) sign of each emotion, in EMOTIONS order
_CORNERS = {'amusement': (1, 1, 1), 'excitement': (1, 1, -1), 'contentment': (1, -1, 1), 'awe': (1, -1, -1),
            'anger': (-1, 1, 1), 'fear': (-1, 1, -1), 'disgust': (-1, -1, 1), 'sadness': (-1, -1, -1)}
_SIGNS = np.array([_CORNERS[e] for e in EMOTIONS], dtype=np.float64)
SPLIT_OFFSETS = {'train': 0, 'val': 10_000_000, 'test': 20_000_000}
"""Index offset of each split: the splits of one seed never share a sample."""


class Cues(NamedTuple):
    """Everything drawn for one sample; the labels are functions of these."""
    temperature: float
    saturation: float
    brightness: float
    horizon: int
    texture: int
    noun: int
    adjective: int
    colour: int
    in_sky: bool
    votes: Tuple[int, ...]
    probs: Tuple[float, ...]

    @property
    def scene(self) -> int:
        return self.horizon * len(TEXTURES) + self.texture

    @property
    def anp(self) -> int:
        return self.adjective * len(NOUNS) + self.noun

    @property
    def caption(self) -> str:
        tone = 'bright' if self.brightness >= 0.65 else 'dark'
        sky = 'warm' if self.temperature >= 0 else 'cool'
        texture = 'bare' if TEXTURES[self.texture] == 'plain' else TEXTURES[self.texture]
        return (f'a {ADJECTIVES[self.adjective]} {_COLOUR_NAMES[self.colour]} {NOUNS[self.noun]} '
                f'{"above" if self.in_sky else "on"} a {tone} {texture} field under a {sky} sky')

    @property
    def emotion(self) -> int:
        """SLL label: the most voted emotion, ties broken by probability."""
        return max(range(len(EMOTIONS)), key=lambda e: (self.votes[e], self.probs[e]))

    @property
    def distribution(self) -> torch.Tensor:
        """LDL target: the vote shares (float32, sums to 1)."""
        votes = torch.tensor(self.votes, dtype=torch.float32)
        return votes / votes.sum()

    @property
    def multi_hot(self) -> torch.Tensor:
        """MLL target: emotions with at least half the votes of the most voted one (float32)."""
        votes = torch.tensor(self.votes, dtype=torch.float32)
        return (2 * votes >= votes.max()).float()


def _emotion_probs(t: float, s: float, b: float, horizon: int, texture: int, noun: int, adjective: int,
                   beta: float) -> np.ndarray:
    valence = 2 * (0.6 * t + 0.4 * (b - 0.65) / 0.35) + _ADJECTIVE_VALENCE[adjective]
    arousal = _TEXTURE_AROUSAL[texture] + (s - 0.6) / 0.4
    member = _NOUN_MEMBER[noun] + _HORIZON_MEMBER[horizon]
    logits = beta * _SIGNS @ np.array([valence, arousal, member])
    p = np.exp(logits - logits.max())
    return p / p.sum()


class AffectWorld:
    """The generator: :meth:`cues` (cheap, no pixels) and :meth:`sample` (cues + rendered image).

    Args:
        seed: world seed; sample ``index`` is a pure function of ``(seed, index)``.
        size: image side in pixels.
        votes: virtual annotators per image (see the module docstring).
        beta: sharpness of the emotion probabilities (higher: less label noise).
    """

    def __init__(self, seed: int = 0, size: int = 64, votes: int = 12, beta: float = 1.5):
        if size < 16:
            raise ValueError(f'size must be >= 16 pixels, got {size}')
        self.seed, self.size, self.votes, self.beta = seed, size, votes, beta

    def _draw(self, index: int) -> Tuple[Cues, np.random.Generator]:
        rng = np.random.default_rng((self.seed, index))
        t, s, b = rng.uniform(-1, 1), rng.uniform(0.2, 1), rng.uniform(0.3, 1)
        horizon, texture, noun, adjective, colour = (int(rng.integers(k)) for k in (
            len(HORIZONS), len(TEXTURES), len(NOUNS), len(ADJECTIVES), len(COLOURS)))
        in_sky = bool(rng.random() < 0.5)
        probs = _emotion_probs(t, s, b, horizon, texture, noun, adjective, self.beta)
        votes = np.bincount(rng.choice(len(EMOTIONS), size=self.votes, p=probs), minlength=len(EMOTIONS))
        cues = Cues(float(t), float(s), float(b), horizon, texture, noun, adjective, colour, in_sky,
                    tuple(int(v) for v in votes), tuple(float(p) for p in probs))
        return cues, rng  # the rest of the stream places and jitters the drawing

    def cues(self, index: int) -> Cues:
        return self._draw(index)[0]

    def sample(self, index: int) -> Tuple[Image.Image, Cues]:
        cues, rng = self._draw(index)
        return _render(cues, rng, self.size), cues


_COOL_SKY, _WARM_SKY = (0.3, 0.55, 1.0), (1.0, 0.55, 0.2)
_COOL_GROUND, _WARM_GROUND = (0.15, 0.5, 0.45), (0.65, 0.45, 0.15)


def _palette(cool: Tuple[float, ...], warm: Tuple[float, ...], warmth: float, saturation: float, value: float
             ) -> np.ndarray:
    """RGB of the cool-to-warm mix at ``warmth`` in [0, 1], with its saturation scaled and value set."""
    mix = [c + (w - c) * warmth for c, w in zip(cool, warm)]
    h, s, _ = colorsys.rgb_to_hsv(*mix)
    return np.array(colorsys.hsv_to_rgb(h, min(s * saturation * 1.3, 1.0), min(value, 1.0)), dtype=np.float32)


@lru_cache(maxsize=8)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _texture_mask(texture: str, yy: np.ndarray, xx: np.ndarray, period: float, phase: float) -> np.ndarray:
    if texture == 'plain':
        return np.zeros_like(yy)
    if texture == 'striped':
        return (np.floor((yy + phase) / period) % 2).astype(np.float32)
    if texture == 'checkered':
        return ((np.floor((yy + phase) / period) + np.floor((xx + phase) / period)) % 2).astype(np.float32)
    cy, cx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2  # dotted
    return (cy * cy + cx * cx <= (period / 3.2) ** 2).astype(np.float32)


def _outline(noun: str) -> np.ndarray:
    """Closed outline of a noun in unit coordinates (x right, y down), radius ~1."""
    if noun == 'circle':
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if noun == 'heart':
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        x = 16 * np.sin(a) ** 3
        y = -(13 * np.cos(a) - 5 * np.cos(2 * a) - 2 * np.cos(3 * a) - np.cos(4 * a))
        return np.stack([x / 17, (y + 2) / 17], 1)
    if noun == 'star':
        a = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    return np.array({
        'house': [(-0.7, 0.9), (-0.7, -0.1), (-0.95, -0.1), (0, -0.95), (0.95, -0.1), (0.7, -0.1), (0.7, 0.9)],
        'spike': [(-0.9, 0.9), (-0.6, -0.9), (-0.3, 0.4), (0, -1), (0.3, 0.4), (0.6, -0.9), (0.9, 0.9)],
        'tower': [(-0.32, 1), (-0.32, -0.45), (0, -1), (0.32, -0.45), (0.32, 1)],
    }[noun], dtype=np.float64)


def _resample(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced along the closed outline."""
    closed = np.vstack([points, points[:1]])
    cum = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    at = np.linspace(0, cum[-1], n, endpoint=False)
    return np.stack([np.interp(at, cum, closed[:, 0]), np.interp(at, cum, closed[:, 1])], 1)


def _render(c: Cues, rng: np.random.Generator, size: int) -> Image.Image:
    yy, xx = _grid(size)
    h = int(round(_HORIZON_ROW[c.horizon] * size))
    # sky: vertical gradient, ground: darker and textured; both mixed from a cool and a warm colour
    warmth = (c.temperature + 1) / 2
    sky, ground = (_palette(cool, warm, warmth, c.saturation, v * c.brightness)
                   for cool, warm, v in ((_COOL_SKY, _WARM_SKY, 1.0), (_COOL_GROUND, _WARM_GROUND, 0.7)))
    top, bottom = sky, _palette(_COOL_SKY, _WARM_SKY, warmth, 0.5 * c.saturation, c.brightness + 0.15)
    w = (yy[:h, :, None] / max(h - 1, 1))
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:h] = top * (1 - w) + bottom * w
    mask = _texture_mask(TEXTURES[c.texture], yy[h:], xx[h:], max(3.0, size / 9), float(rng.uniform(0, size / 9)))
    image[h:] = ground * (1 - 0.45 * mask[..., None])
    # the object: a noun outline transformed by its adjective, drawn as an anti-aliasing-free mask
    adjective, noun = ADJECTIVES[c.adjective], NOUNS[c.noun]
    colour = np.asarray(COLOURS[_COLOUR_NAMES[c.colour]], dtype=np.float32)
    radius = size * rng.uniform(0.17, 0.23)
    cx = size * rng.uniform(0.32, 0.68)
    cy = (rng.uniform(0.2 * size, h - 0.6 * radius) if c.in_sky else rng.uniform(h + 0.3 * radius, 0.82 * size))
    pts = _outline(noun)
    if adjective == 'jagged':
        pts = _resample(pts, 40)
        centre = pts.mean(0)
        pts = centre + (pts - centre) * np.where(np.arange(40) % 2 == 0, 1.18, 0.8)[:, None]
    elif adjective == 'withered':  # drooping and tilted, faded towards brown
        a = np.deg2rad(25 if rng.random() < 0.5 else -25)
        pts = pts @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * np.array([1.0, 0.7]) + [0, 0.3]
        colour = 0.4 * colour + 0.6 * np.array([0.45, 0.36, 0.25], dtype=np.float32)
    elif adjective == 'bright':
        colour = 0.45 * colour + 0.55
    shape = Image.new('L', (size, size))
    draw = ImageDraw.Draw(shape)
    draw.polygon([tuple(p) for p in pts * radius + [cx, cy]], fill=255)
    obj = np.asarray(shape, dtype=np.float32) / 255
    if adjective == 'broken':  # a crack through the middle, the right half slipped down
        k = int(round(cx))
        obj = np.concatenate([obj[:, :k - 1], np.zeros_like(obj[:, :2]), np.roll(obj[:, k + 1:], max(2, size // 24), 0)], 1)
    if adjective in ('glowing', 'bright'):  # glowing: a wide pale halo; bright: a thin white rim
        halo = Image.new('L', (size, size))
        scale = 1.45 if adjective == 'glowing' else 1.15
        ImageDraw.Draw(halo).polygon([tuple(p) for p in pts * radius * scale + [cx, cy]], fill=255)
        rim = np.asarray(halo, dtype=np.float32)[..., None] / 255 * (1 - obj[..., None])
        glow = 0.5 * colour + 0.5 if adjective == 'glowing' else np.ones(3, dtype=np.float32)
        image = image * (1 - 0.8 * rim) + glow * 0.8 * rim
    image = image * (1 - obj[..., None]) + colour * obj[..., None]
    return Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), 'RGB')


CACHE_LIMIT = 12_000
"""A dataset of at most this many samples keeps each rendered image (and its cues) after its first use, in a cache
it shares with every other such dataset of the same world: a labelled set read for 25 epochs is drawn once instead
of 25 times, and the two tasks of a pre-training model (colorization and super-resolution, say) draw their common
images once. A sample is a pure function of the world's seed and its index, so the cache changes nothing but the
time; 12,000 images of 73 px take about 190 MB (the demo's largest pre-training set has 10,240). The study's
pre-training sets (60,000 images, each read about once) are not kept."""


class _Renders(dict):
    """``{world index: (image, cues)}`` of one world, shared by its datasets (a dict that can be weakly referenced)."""


# freed with the last dataset that reads it, as each dataset's own cache was
_RENDERS: 'weakref.WeakValueDictionary[Tuple[Any, ...], _Renders]' = weakref.WeakValueDictionary()


def _shared_renders(key: Tuple[Any, ...]) -> _Renders:
    renders = _RENDERS.get(key)
    if renders is None:
        renders = _RENDERS[key] = _Renders()
    return renders


class _SyntheticDataset(Dataset):
    """``n`` samples of one split of an :class:`AffectWorld`; subclasses define :meth:`target`. Up to
    :data:`CACHE_LIMIT` samples, rendered images are kept in memory (per process), shared by the datasets of the
    same world."""

    classes: Optional[Sequence[str]] = None

    def __init__(self, n: int = 1000, split: str = 'train', transform: Optional[Callable] = None, seed: int = 0,
                 size: int = 64, **world_kwargs: Any):
        if split not in SPLIT_OFFSETS:
            raise ValueError(f'split must be one of {tuple(SPLIT_OFFSETS)}, got {split!r}')
        if not 0 < n <= 10_000_000:
            raise ValueError(f'n must be in 1..10,000,000, got {n}')
        self.world = AffectWorld(seed, size, **world_kwargs)
        self.n, self.split, self.transform = n, split, transform
        self.offset = SPLIT_OFFSETS[split]
        world_key = (seed, size, *sorted(world_kwargs.items()))
        self._rendered: Optional[_Renders] = _shared_renders(world_key) if n <= CACHE_LIMIT else None

    def __len__(self) -> int:
        return self.n

    def _world_index(self, index: int) -> int:
        """The world's index of sample ``index`` (negative counts from the end, as for a list)."""
        if not -self.n <= index < self.n:
            raise IndexError(f'index {index} out of range for {self.n} samples')
        return self.offset + index % self.n

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        i = self._world_index(index)
        if self._rendered is None:
            image, cues = self.world.sample(i)
        else:
            if i not in self._rendered:
                self._rendered[i] = self.world.sample(i)
            image, cues = self._rendered[i]
        # transforms make new images; without one, a copy keeps the kept image safe from the caller
        return (self.transform(image) if self.transform is not None else image.copy()), self.target(cues)

    def cues(self, index: int) -> Cues:
        return self.world.cues(self._world_index(index))

    @property
    def targets(self) -> list:
        """The target of every sample, computed from the cues without rendering."""
        return [self.target(self.cues(i)) for i in range(self.n)]

    def target(self, cues: Cues) -> Any:
        raise NotImplementedError


class SyntheticImages(_SyntheticDataset):
    """``(image, 0)``: images only, for the ST tasks (colorization and super-resolution use the image)."""

    def target(self, cues: Cues) -> int:
        return 0


class SyntheticScenes(_SyntheticDataset):
    """``(image, scene index)`` over :data:`SCENES` (HO scene recognition)."""

    classes = SCENES

    def target(self, cues: Cues) -> int:
        return cues.scene


class SyntheticANP(_SyntheticDataset):
    """``(image, ANP index)`` over :data:`ANPS` (HP ANP classification)."""

    classes = ANPS

    def target(self, cues: Cues) -> int:
        return cues.anp


class SyntheticCaptions(_SyntheticDataset):
    """``(image, caption string)`` (HP captioning); :attr:`utterances` for vocabulary building, as ArtEmis."""

    def target(self, cues: Cues) -> str:
        return cues.caption

    @property
    def utterances(self) -> list:
        return self.targets


class SyntheticEmotion(_SyntheticDataset):
    """``(image, target)`` over :data:`EMOTIONS` (FI order) for ``view``:

    ``'sll'`` the class index, ``'mll'`` a float32 multi-hot vector, ``'ldl'`` a float32 distribution.
    """

    classes = EMOTIONS

    def __init__(self, n: int = 1000, split: str = 'train', transform: Optional[Callable] = None, seed: int = 0,
                 size: int = 64, view: str = 'sll', **world_kwargs: Any):
        if view not in ('sll', 'mll', 'ldl'):
            raise ValueError(f"view must be 'sll', 'mll' or 'ldl', got {view!r}")
        super().__init__(n, split, transform, seed, size, **world_kwargs)
        self.view = self.task = view

    def target(self, cues: Cues) -> Any:
        if self.view == 'sll':
            return cues.emotion
        return cues.multi_hot if self.view == 'mll' else cues.distribution


def write_image_folder(root: PathLike, n: int, split: str = 'train', seed: int = 0, size: int = 64,
                       quality: int = 90) -> Path:
    """Write ``n`` synthetic images as an FI-style class-folder dataset ``root/<emotion>/<emotion>_NNNN.jpg``.

    Folders follow :data:`EMOTIONS` (all 8 are created, even if empty); the class is the SLL label.
    Returns ``root``.
    """
    root = Path(root)
    for name in EMOTIONS:
        (root / name).mkdir(parents=True, exist_ok=True)
    world = AffectWorld(seed, size)
    width = max(4, len(str(n - 1)))
    for i in range(n):
        image, cues = world.sample(SPLIT_OFFSETS[split] + i)
        name = EMOTIONS[cues.emotion]
        image.save(root / name / f'{name}_{i:0{width}d}.jpg', quality=quality)
    return root
