"""The 15 CIFAR-10-C corruptions at severities 1-5, in numpy, scipy, OpenCV and scikit-image.

References:
    D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019, https://arxiv.org/abs/1903.12261.

    The authors' generator, ``ImageNet-C/create_c/make_cifar_c.py`` in https://github.com/hendrycks/robustness.
    Every parameter below is that generator's, per severity; the code is bnnbench's own.

Conventions:
    * Input is uint8 ``(N, H, W, C)`` with ``C`` in {1, 3}; the output is a new uint8 array of the same
      shape and the input is never modified.
    * A corruption sees ``x / 255`` as float64 in [0, 1]; its result is clipped to [0, 1], multiplied by
      255 and *truncated* to uint8 (``astype(np.uint8)``), as the official files were (``np.uint8`` after
      the clip), so values are floored, not rounded.
    * Images with H or W below 32 px are resized to 32x32 (pixel replication when 32 is a multiple of
      the side, so the round trip alone is exact; bilinear otherwise), corrupted, and resized back to
      their own size with area averaging before the truncation; the tables are for 32-px images. Larger
      images are corrupted at their native size with the same pixel-unit parameters (blur radii, shifts,
      displacements), so a corruption is milder on them than on 32-px images.
    * Grayscale images are replicated to three channels, corrupted, and turned back into one channel by
      the mean over the three channels.
    * All randomness comes from the ``numpy.random.Generator`` passed in, drawn for the whole batch at
      once: the same seed and the same batch give bit-identical output, but an image's corruption also
      depends on where it sits in its batch.

Where bnnbench departs from the official files, and why:
    * frost: the generator blends crops of six frost photographs that bnnbench does not ship; it uses a
      procedural texture instead (``FROST_SOURCE``), so frost results are not comparable with the
      official CIFAR-10-C frost files.
    * motion_blur, snow: the generator calls ImageMagick's MotionBlurImage. bnnbench rebuilds its kernel
      as a one-sided line for ``cv2.filter2D``: ``2*ceil(radius)+1`` taps weighted by ``exp(-i^2/2sigma^2)``
      going from the centre along the angle, with edge pixels repeated past the border. The generator
      also round-trips through 8-bit PNG around the blur; bnnbench stays in float.
    * glass_blur: the generator's pixel "swap" (``x[h, w], x[h2, w2] = x[h2, w2], x[h, w]`` on numpy
      views) in fact copies the neighbour into (h, w) and leaves the neighbour as it was (numpy issue
      14428). The official files were made that way, so bnnbench does the same.
    * zoom_blur: zoom factors run from 1.00 to the table's largest factor in steps of 0.01. The
      generator's ``np.arange(1, z_max + 0.01, 0.01)`` overshoots by one factor at severities 1 and 2
      (float rounding), so its averages there also include 1.06 and 1.11.
    * pixelate, jpeg_compression: PIL's BOX resize and JPEG writer become cv2's area resize down and
      centre-aligned nearest resize up (what PIL's box filter does when enlarging), and libjpeg through
      ``cv2.imencode`` (default 4:2:0 chroma subsampling, as PIL's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral

import cv2
import numpy as np
from scipy import ndimage
from skimage.color import hsv2rgb, rgb2hsv
from skimage.util import random_noise

__all__ = ["CORRUPTIONS", "FROST_SOURCE", "SEVERITIES", "corrupt"]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
FROST_SOURCE = "procedural"

_SIZE = 32  # the image size the parameter tables are written for

# Parameters per severity 1..5, from the generator.
_GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # standard deviation
_SHOT_NOISE = (500, 250, 100, 75, 50)  # Poisson rate per unit intensity
_IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values set to 0 or 1
_DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # (disk radius, alias sigma)
# (sigma, largest pixel shift delta, iterations)
_GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
_MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # (radius, sigma)
_ZOOM_BLUR = (1.05, 1.10, 1.15, 1.20, 1.25)  # largest zoom factor
_SNOW = (  # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
_FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image weight, frost weight)
_FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # (strength, plasma decay)
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the distance from the mean
_ELASTIC_TRANSFORM = (  # (alpha, sigma, affine shift), in units of 32 px
    (0, 0, 0.08),
    (0.05, 0.2, 0.07),
    (0.08, 0.06, 0.06),
    (0.1, 0.04, 0.05),
    (0.1, 0.03, 0.03),
)
_PIXELATE = (0.95, 0.90, 0.85, 0.75, 0.65)  # fraction of the side length to box-resize to
_JPEG_COMPRESSION = (80, 65, 58, 50, 40)  # JPEG quality

_RGB_TO_GREY = np.array([0.299, 0.587, 0.114])  # cv2.COLOR_RGB2GRAY, as the generator's snow uses
_FROST_TINT = np.array([0.85, 0.93, 1.0])  # RGB: frost photographs are bluish white


# ---------------------------------------------------------------------------------------------- helpers


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian(x, sigma, channel_axis=-1) on each image of a (N, H, W, C) batch."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)


def _zoom_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear resampling of one axis to `size` samples, corner-aligned as scipy.ndimage.zoom(order=1).

    Doing the axes one at a time gives scipy's bilinear zoom without interpolating over the batch and
    channel axes, which makes it much faster on a batch.
    """
    length = x.shape[axis]
    position = np.arange(size) * ((length - 1) / (size - 1))
    low = np.minimum(np.floor(position).astype(np.intp), length - 2)
    weight = (position - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, low + 1, axis=axis) * weight


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom each image of a (N, H, W, C) batch about its centre by `factor`, keeping its size."""
    _, h, w, _ = x.shape
    crop_h, crop_w = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    zoomed = x[:, top:top + crop_h, left:left + crop_w]
    # scipy.ndimage.zoom's output length, which the generator's trimming relies on
    zoomed = _zoom_axis(zoomed, 1, round(crop_h * factor))
    zoomed = _zoom_axis(zoomed, 2, round(crop_w * factor))
    top, left = (zoomed.shape[1] - h) // 2, (zoomed.shape[2] - w) // 2
    return zoomed[:, top:top + h, left:left + w]


def _motion_kernel(radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion-blur kernel as a 2-D correlation kernel for cv2.filter2D.

    ImageMagick averages the pixels at integer offsets ``ceil(i * (cos, sin)(angle) - 0.5)`` for
    ``i = 0 .. 2*ceil(radius)``, weighted by a Gaussian in ``i``: a trail on one side of the pixel only.
    """
    width = 2 * math.ceil(radius) + 1
    taps = np.arange(width)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    theta = math.radians(angle)
    dx = np.ceil(taps * math.cos(theta) - 0.5).astype(np.intp)
    dy = np.ceil(taps * math.sin(theta) - 0.5).astype(np.intp)
    kernel = np.zeros((2 * width - 1, 2 * width - 1))
    np.add.at(kernel, (width - 1 + dy, width - 1 + dx), weights)
    return kernel


def _line_blur(images: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """Motion-blur each image (N, H, W[, C]) along its own angle in degrees; borders repeat the edge."""
    return np.stack([
        cv2.filter2D(image, -1, _motion_kernel(radius, sigma, angle), borderType=cv2.BORDER_REPLICATE)
        for image, angle in zip(images, angles, strict=True)
    ])


def _plasma_fractal(n: int, size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square plasma fractals (n, size, size) in [0, 1]; `size` a power of two.

    The random perturbation starts at 100 * U(-100, 100) and shrinks by `decay` at each halving of the
    step, as in the generator: a smaller decay keeps more fine detail.
    """
    maps = np.zeros((n, size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step].copy()
        square = corners + np.roll(corners, -1, axis=1)
        square += np.roll(square, -1, axis=2)
        maps[:, half::step, half::step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centres = maps[:, half::step, half::step]
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, ::step, half::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half::step, ::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step, wibble = half, wibble / decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def _frost_texture(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Procedural stand-in for the frost photographs: (n, h, w, 3) in [0, 1], bluish white.

    A smooth haze under short bright needles (sparse seeds drawn out along one of eight orientations
    each), slightly blurred so the needles are not single-pixel aliased lines. Its mean is about 0.5; it
    is not calibrated against the photographs, which bnnbench does not have.
    """
    haze = ndimage.gaussian_filter(rng.random((n, h, w)), sigma=(0, 2, 2), mode="wrap")
    haze -= haze.min(axis=(1, 2), keepdims=True)
    haze /= np.maximum(haze.max(axis=(1, 2), keepdims=True), 1e-12)
    seeds = np.where(rng.random((n, h, w)) < 0.06, rng.uniform(0.5, 1.0, (n, h, w)), 0.0)
    orientation = rng.integers(0, 8, (n, h, w))
    needles = np.zeros((n, h, w))
    for k in range(8):
        theta = math.pi * k / 8
        oriented = np.where(orientation == k, seeds, 0.0)
        for t in range(-3, 4):
            shift = (round(t * math.sin(theta)), round(t * math.cos(theta)))
            # fading towards the tips makes the needles look grown rather than stamped
            needles = np.maximum(needles, np.roll(oriented, shift, axis=(1, 2)) * (1 - abs(t) / 4))
    needles = ndimage.gaussian_filter(needles, sigma=(0, 0.5, 0.5), mode="wrap")
    texture = np.clip(0.25 + 0.35 * haze + 0.9 * needles, 0.0, 1.0)
    return texture[..., None] * _FROST_TINT


def _disk_kernel(radius: float, alias_sigma: float) -> np.ndarray:
    """A disk of `radius` on a 17x17 grid, normalised to sum 1, anti-aliased by a 3x3 Gaussian."""
    grid = np.arange(-8, 9)
    disk = (grid[None, :] ** 2 + grid[:, None] ** 2 <= radius**2).astype(np.float64)
    return cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=alias_sigma)


# ----------------------------------------------------------------------------------------- corruptions
# Each takes a float (N, H, W, 3) batch in [0, 1] and returns one of the same shape, not yet clipped.


def _gaussian_noise(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return x01 + rng.normal(0.0, _GAUSSIAN_NOISE[severity - 1], x01.shape)


def _shot_noise(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    rate = _SHOT_NOISE[severity - 1]
    return rng.poisson(x01 * rate) / rate


def _impulse_noise(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # every value (channels independently) is flipped with this probability, half to 0 and half to 1
    return random_noise(x01, mode="s&p", amount=_IMPULSE_NOISE[severity - 1], rng=rng)


def _defocus_blur(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    kernel = _disk_kernel(*_DEFOCUS_BLUR[severity - 1])
    return np.stack([cv2.filter2D(image, -1, kernel) for image in x01])


def _glass_blur(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, iterations = _GLASS_BLUR[severity - 1]
    # the generator keeps the first blur as a uint8 image, truncating
    x = np.floor(_gaussian(x01, sigma) * 255) / 255
    n, h, w, _ = x.shape
    batch = np.arange(n)
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    for _ in range(iterations):
        shifts = rng.integers(-delta, delta, size=(len(rows), len(cols), 2, n))
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                dx, dy = shifts[i, j]
                # the generator's "swap" copies the neighbour into (row, col); see the module docstring
                x[:, row, col] = x[batch, row + dy, col + dx]
    return _gaussian(x, sigma)


def _motion_blur(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = _MOTION_BLUR[severity - 1]
    return _line_blur(x01, radius, sigma, rng.uniform(-45, 45, size=len(x01)))


def _zoom_blur(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    steps = round((_ZOOM_BLUR[severity - 1] - 1) / 0.01)
    total = x01.copy()
    for step in range(steps + 1):
        total += _clipped_zoom(x01, 1 + 0.01 * step)
    return total / (steps + 2)


def _snow(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, blend = _SNOW[severity - 1]
    n, h, w, _ = x01.shape
    flakes = _clipped_zoom(rng.normal(loc, scale, size=(n, h, w, 1)), zoom)[..., 0]
    flakes[flakes < threshold] = 0
    flakes = _line_blur(np.clip(flakes, 0, 1), radius, sigma, rng.uniform(-135, -45, size=n))[..., None]
    grey = (x01 @ _RGB_TO_GREY)[..., None]
    x = blend * x01 + (1 - blend) * np.maximum(x01, 1.5 * grey + 0.5)
    return x + flakes + np.rot90(flakes, k=2, axes=(1, 2))


def _frost(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    image_weight, frost_weight = _FROST[severity - 1]
    n, h, w, _ = x01.shape
    return image_weight * x01 + frost_weight * _frost_texture(n, h, w, rng)


def _fog(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = _FOG[severity - 1]
    n, h, w, _ = x01.shape
    size = max(_SIZE, 1 << (max(h, w) - 1).bit_length())
    plasma = _plasma_fractal(n, size, decay, rng)[:, :h, :w, None]
    peak = x01.max(axis=(1, 2, 3), keepdims=True)
    return (x01 + strength * plasma) * peak / (peak + strength)


def _brightness(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    hsv = rgb2hsv(x01)
    hsv[..., 2] = np.clip(hsv[..., 2] + _BRIGHTNESS[severity - 1], 0, 1)
    return hsv2rgb(hsv)


def _contrast(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # the generator's np.mean(x, axis=(0, 1)) on one (H, W, 3) image: a mean per image and channel
    means = x01.mean(axis=(1, 2), keepdims=True)
    return (x01 - means) * _CONTRAST[severity - 1] + means


def _elastic_transform(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    alpha, sigma, shift = (_SIZE * p for p in _ELASTIC_TRANSFORM[severity - 1])
    n, h, w, c = x01.shape
    # three points around the centre, each moved by up to `shift` px, define the random affine map
    centre = np.float32([h, w]) // 2
    side = min(h, w) // 3
    source = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    targets = source + rng.uniform(-shift, shift, size=(n, 3, 2)).astype(np.float32)
    # float32 as in the generator: cv2's float64 warpAffine rounds source positions to 1/32 px
    warped = np.stack([
        cv2.warpAffine(image, cv2.getAffineTransform(source, target), (w, h),
                       borderMode=cv2.BORDER_REFLECT_101)
        for image, target in zip(x01.astype(np.float32), targets, strict=True)
    ]).astype(np.float64)
    # uniform noise smoothed by a Gaussian and scaled: a smooth random displacement field (dx, dy)
    noise = rng.uniform(-1, 1, size=(2, n, h, w))
    dx, dy = alpha * ndimage.gaussian_filter(noise, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3)
    index, row, col, channel = np.meshgrid(*(np.arange(size) for size in (n, h, w, c)), indexing="ij")
    coordinates = np.stack([index, row + dy[..., None], col + dx[..., None], channel]).reshape(4, -1)
    # the batch and channel coordinates are integers, so this only interpolates within each image plane
    resampled = ndimage.map_coordinates(warped, coordinates, order=1, mode="reflect")
    return resampled.reshape(x01.shape)


def _pixelate(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    _, h, w, _ = x01.shape
    fraction = _PIXELATE[severity - 1]
    small = (int(w * fraction), int(h * fraction))
    return np.stack([
        cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (w, h),
                   interpolation=cv2.INTER_NEAREST_EXACT)
        for image in x01
    ])


def _jpeg_compression(x01: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # JPEG needs 8-bit pixels; truncating as the final conversion does is exact for x01 = uint8 / 255
    pixels = (np.clip(x01, 0, 1) * 255).astype(np.uint8)
    quality = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_COMPRESSION[severity - 1]]
    decoded = []
    for image in pixels:
        # cv2 wants BGR; feeding RGB would mix the wrong channels into JPEG's luma and chroma
        _, encoded = cv2.imencode(".jpg", image[..., ::-1], quality)
        decoded.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])
    return np.stack(decoded) / 255.0


_Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

_FUNCTIONS: dict[str, _Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}

CORRUPTIONS: tuple[str, ...] = tuple(_FUNCTIONS)


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply one CIFAR-10-C corruption at one severity to a batch of images.

    Args:
        images: uint8 array (N, H, W, C), C in {1, 3}, RGB when C = 3. Not modified.
        name: one of `CORRUPTIONS`.
        severity: one of `SEVERITIES` (1 mildest, 5 strongest).
        rng: the only source of randomness; the same seed and batch give identical output.

    Returns:
        A new uint8 array of the shape of `images`: the corrupted images, truncated (floored) to
        integers as in the official CIFAR-10-C files.

    Raises:
        ValueError: unknown `name` or `severity`, or `images` not uint8 (N, H, W, 1 or 3).

    The module docstring says how small, large and grayscale images are handled and where the output
    departs from the official CIFAR-10-C files.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid choices: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, Integral) or severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; valid choices: {', '.join(map(str, SEVERITIES))}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    if n == 0:
        return images.copy()

    x01 = images / 255.0
    resized = h < _SIZE or w < _SIZE
    if resized:
        x01 = _upsample(x01)
    if c == 1:
        x01 = np.repeat(x01, 3, axis=-1)

    out = np.clip(_FUNCTIONS[name](x01, int(severity), rng), 0.0, 1.0) * 255.0
    if c == 1:
        out = out.mean(axis=-1, keepdims=True)
    if resized:
        out = _downsample(out, h, w)
    # truncate like the official files, but not an integer that float arithmetic left at 254.9999...
    return (out + 1e-6).astype(np.uint8)


def _upsample(x01: np.ndarray) -> np.ndarray:
    """(N, h, w, C) -> (N, 32, 32, C). Pixel replication when 32 is a multiple of h and w, so that
    `_downsample` undoes it exactly and a corrupted small image differs from the clean one by the
    corruption alone; bilinear otherwise."""
    n, h, w, c = x01.shape
    exact = _SIZE % h == 0 and _SIZE % w == 0
    interpolation = cv2.INTER_NEAREST if exact else cv2.INTER_LINEAR
    up = np.stack([cv2.resize(image, (_SIZE, _SIZE), interpolation=interpolation) for image in x01])
    return up.reshape(n, _SIZE, _SIZE, c)  # cv2 drops a single channel axis


def _downsample(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, 32, 32, C) -> (N, h, w, C) by area averaging."""
    n, _, _, c = x.shape
    return np.stack([cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA) for image in x]).reshape(n, h, w, c)
