"""Image input for every sentizoo entry point: one robust loader and a dataset of image files.

:func:`load_image` is the single way sentizoo reads an image: whatever the file holds (palette,
transparency, CMYK, 16-bit, float, 1-bit, EXIF-rotated), the result is an upright 8-bit RGB image
or an :class:`ImageLoadError` that names the file and the reason. :class:`ImageFiles` wraps it for a
``DataLoader`` so that a bad file becomes a failure record in its batch instead of stopping the run.
"""
from __future__ import annotations

import errno
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ['IMAGE_EXTENSIONS', 'MAX_ASPECT_RATIO', 'DRAFT_SIZE', 'ImageLoadError', 'load_image', 'check_image_header',
           'list_images', 'ImageFiles', 'ImageBatch', 'collate_images', 'default_workers']

PathLike = Union[str, 'os.PathLike[str]']

IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jfif', '.jpeg', '.jpg', '.pbm', '.pgm', '.png', '.pnm', '.ppm', '.tif',
                    '.tiff', '.webp')
"""Suffixes (lower case) picked up when a directory is searched; files named explicitly are always read."""

BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white: how viewers and web pages show them. Dropping alpha
instead would expose whatever colour the fully transparent pixels happen to store (often black)."""

_MAX_16BIT = 65535

MAX_ASPECT_RATIO = 16
"""Longer side / shorter side, at most: the evaluation transform scales the short side to 256, so a
116-byte 1x8000 PNG would become a 256x2,048,000 image (1.5 GB). Such files are refused."""

DRAFT_SIZE = 1024
"""JPEGs larger than this on both sides are decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``), never
below it: models see 224-448 px, and a 50 MP photo then takes a sixteenth of the memory and time."""


class ImageLoadError(OSError):
    """An image file could not be decoded into RGB; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f'Cannot load image {self.path}: {reason}')

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):  # survives the trip from a DataLoader worker process
        return type(self), (self.path, self.reason)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Single-channel high-depth modes to ``L``: 16-bit (``I;16*``, ``I``) scaled by 255/65535, float (``F``)
    taken as [0, 1] when its maximum is at most 1 (else as 0-255), both rounded and clipped."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == 'F':
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
    else:
        scale = 255.0 / _MAX_16BIT
    values = np.nan_to_num(values * scale, nan=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode='L')


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ('I', 'F') or image.mode.startswith('I;16'):
        image = _to_8bit(image)
    # Alpha channels (incl. premultiplied) and palette or colour-key transparency ('transparency' info).
    if 'A' in image.getbands() or 'a' in image.getbands() or 'transparency' in image.info:
        background = Image.new('RGBA', image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image.convert('RGBA')).convert('RGB')
    # CMYK (incl. Adobe's inverted JPEG CMYK, which Pillow decodes), L, 1, YCbCr, RGBX ...
    return image.convert('RGB')


def _check_shape(path: str, image: Image.Image) -> None:
    """Refuse, from the header and before decoding, images whose aspect ratio exceeds MAX_ASPECT_RATIO."""
    width, height = image.size
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise ImageLoadError(path, f'{width}x{height} pixels: an aspect ratio beyond {MAX_ASPECT_RATIO}:1 would '
                                   f'take too much memory once resized; crop the image first')


@contextmanager
def _opened(path: str) -> Iterator[Image.Image]:
    """``path`` opened by Pillow (its header read, no pixel decoded) and checked for size and shape; any failure,
    also of what the caller does with the image inside, is an :class:`ImageLoadError` naming the file."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageLoadError(path, 'the file is empty (0 bytes)')
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse the whole range.
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_shape(path, image)
                yield image
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, f'possible decompression bomb: {e} Raise PIL.Image.MAX_IMAGE_PIXELS '
                                   f'if the file is trusted.') from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, 'not an image file, or a format Pillow cannot read') from e
    except OSError as e:
        if e.errno == errno.ENOENT and os.path.islink(path):
            raise ImageLoadError(path, f'broken symbolic link (to {os.readlink(path)})') from e
        if e.errno is not None:  # missing, a directory, permission denied, a symbolic link loop ...
            raise ImageLoadError(path, e.strerror or str(e)) from e
        raise ImageLoadError(path, f'corrupt or truncated image data ({e})') from e
    except (SyntaxError, ValueError, EOFError) as e:
        # Besides OSError ("image file is truncated"), Pillow reports corrupt data as SyntaxError (broken
        # headers) or ValueError/EOFError (bad sizes, early end); all mean "bad file".
        raise ImageLoadError(path, f'corrupt or truncated image data ({type(e).__name__}: {e})') from e
    except Exception as e:  # any other decoder failure (e.g. NotImplementedError for DDS variants) is this file's
        raise ImageLoadError(path, f'cannot decode ({type(e).__name__}: {e})') from e


def load_image(path: PathLike) -> Image.Image:
    """Read ``path`` as an upright 8-bit RGB image.

    * EXIF orientation is applied (a photo taken in portrait comes back in portrait).
    * Palette, greyscale, 1-bit, CMYK, 16-bit integer (scaled by 255/65535, not clipped) and 32-bit float
      images are converted to RGB; transparency (alpha or palette/colour-key) is composited onto white.
    * Multi-frame files (GIF, TIFF) give their first frame.
    * JPEGs larger than :data:`DRAFT_SIZE` on both sides are decoded at a reduced scale, not below it.

    Raises:
        ImageLoadError: the file is empty, missing, not an image, truncated or corrupt, larger than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible decompression bomb; raise the limit for trusted files),
            or with an aspect ratio beyond :data:`MAX_ASPECT_RATIO`.
    """
    path = os.fspath(path)
    with _opened(path) as image:
        if image.format == 'JPEG':
            image.draft(None, (DRAFT_SIZE, DRAFT_SIZE))
        image.load()  # decode now: truncated or corrupt data fails here, not later in a transform
        return _to_rgb(ImageOps.exif_transpose(image))


def check_image_header(path: PathLike) -> None:
    """Raise the :class:`ImageLoadError` that :func:`load_image` would raise from the file's size and header alone
    (missing, empty, not an image, a decompression bomb, an extreme aspect ratio), decoding no pixel: cheap
    enough to run over a whole training set before its first step. Corrupt pixel data still fails later."""
    path = os.fspath(path)
    with _opened(path):
        pass


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith('.') for part in path.relative_to(root).parts)


def _is_broken_link(path: Path) -> bool:
    """A symbolic link to nothing, or in a loop."""
    return path.is_symlink() and not path.exists()


def list_images(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Expand files and directories into a list of image files.

    Directories are searched recursively for files with an :data:`IMAGE_EXTENSIONS` suffix (any case),
    skipping hidden files and folders (``.git``, macOS ``._*`` files), in sorted order. Symbolic links to
    files are followed; links to folders inside a searched folder are not (no cycles, no escaping the
    tree), a folder named in ``paths`` is. Files named explicitly are kept whatever their suffix, and
    broken links and link loops are kept too, so that :func:`load_image` reports each as a bad file.
    The order of ``paths`` is kept and duplicates are dropped.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict = {}  # ordered set
    for given in map(Path, paths):
        if given.is_dir():
            found.update(dict.fromkeys(
                p for p in sorted(given.rglob('*'))
                if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or _is_broken_link(p))
                and not _is_hidden(p, given)))
        elif given.exists() or given.is_symlink():
            found[given] = None
        else:
            raise FileNotFoundError(f'No such file or directory: {given}')
    return list(found)


class ImageFiles(torch.utils.data.Dataset):
    """Map-style dataset over image files: ``dataset[i] -> (transform(load_image(file)), i)``.

    A file that fails to load yields ``(ImageLoadError, i)`` instead of raising, so a ``DataLoader`` with
    ``collate_fn=collate_images`` keeps going and the failure is reported with its batch.

    Args:
        paths: files and/or directories, expanded with :func:`list_images`.
        transform: applied to each RGB PIL image (e.g. timm's ``create_transform``).
    """

    def __init__(self, paths: Union[PathLike, Iterable[PathLike]], transform: Optional[Callable] = None) -> None:
        self.files = list_images(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tuple[object, int]:
        try:
            image = load_image(self.files[index])
        except ImageLoadError as e:
            return e, index
        return (self.transform(image) if self.transform is not None else image), index


class ImageBatch(NamedTuple):
    """A collated batch: the stacked good images, their dataset indices, and the failures."""
    images: Optional[torch.Tensor]  # None when every file of the batch failed
    indices: List[int]
    failures: List[Tuple[int, ImageLoadError]]


def collate_images(batch: Sequence[Tuple[object, int]]) -> ImageBatch:
    """``collate_fn`` for :class:`ImageFiles`: stacks the loaded tensors and sets the failures aside."""
    good = [(x, i) for x, i in batch if not isinstance(x, ImageLoadError)]
    failures = [(i, x) for x, i in batch if isinstance(x, ImageLoadError)]
    images = torch.stack([x for x, _ in good]) if good else None
    return ImageBatch(images, [i for _, i in good], failures)


def default_workers(limit: int = 8) -> int:
    """DataLoader worker processes by default: the CPU cores this process may use, at most ``limit``. More
    workers than cores only compete with the model (and torch warns about it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return min(limit, cores)
