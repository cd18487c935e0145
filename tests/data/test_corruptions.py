"""Tests of the CIFAR-10-C corruptions: shapes, determinism, severity ordering, closed forms, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from sklearn.datasets import load_digits

from bnnbench.data.corruptions import CORRUPTIONS, FROST_SOURCE, SEVERITIES, corrupt

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost",
          "fog", "elastic_transform")
DETERMINISTIC = tuple(name for name in CORRUPTIONS if name not in RANDOM)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The first 100 sklearn digits as uint8 (100, 8, 8, 1), pixels round(v * 255 / 16)."""
    return np.round(load_digits().images[:100] * (255 / 16)).astype(np.uint8)[..., None]


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """Smooth random colour images spanning 0..255, uint8 (16, 32, 32, 3)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(0).random((16, 32, 32, 3)), sigma=(0, 1.5, 1.5, 0))
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return np.round(noise * 255).astype(np.uint8)


def _mean_change(images: np.ndarray, name: str, severity: int) -> float:
    """Mean |corrupt(x) - x| in [0, 1] units, averaged over SEEDS."""
    per_seed = [corrupt(images, name, severity, np.random.default_rng(seed)) / 255.0 for seed in SEEDS]
    return float(np.mean([np.abs(out - images / 255.0).mean() for out in per_seed]))


@pytest.fixture(scope="module")
def changes(digits: np.ndarray) -> dict[str, np.ndarray]:
    """Mean change per corruption at severities 1..5 on the digits."""
    return {name: np.array([_mean_change(digits, name, s) for s in SEVERITIES]) for name in CORRUPTIONS}


def test_small_image_round_trip_is_exact(digits: np.ndarray) -> None:
    from bnnbench.data.corruptions import _downsample, _upsample

    x = digits / 255.0
    np.testing.assert_array_equal(_downsample(_upsample(x), 8, 8), x)


def test_names_and_constants() -> None:
    assert CORRUPTIONS == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                           "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                           "elastic_transform", "pixelate", "jpeg_compression")
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert FROST_SOURCE == "procedural"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_and_input_untouched(name: str, digits: np.ndarray, rgb: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    # 8x8 grey and 32x32 colour as specified, plus native-size and non-square images
    batches = [digits[:6], rgb[:4], rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8),
               rng.integers(0, 256, (2, 16, 40, 1), dtype=np.uint8)]
    for images in batches:
        before = images.copy()
        for severity in SEVERITIES:
            out = corrupt(images, name, severity, rng)
            assert out.shape == images.shape and out.dtype == np.uint8
            assert not np.shares_memory(out, images)
        np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_same_output(name: str, digits: np.ndarray, rgb: np.ndarray) -> None:
    for images in (digits[:20], rgb[:6]):
        first = corrupt(images, name, 3, np.random.default_rng(42))
        np.testing.assert_array_equal(first, corrupt(images, name, 3, np.random.default_rng(42)))


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_depend_on_seed(name: str, digits: np.ndarray, rgb: np.ndarray) -> None:
    for images in (digits[:20], rgb[:6]):
        for severity in (1, 5):
            a = corrupt(images, name, severity, np.random.default_rng(0))
            assert not np.array_equal(a, corrupt(images, name, severity, np.random.default_rng(1)))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_ignore_seed(name: str, digits: np.ndarray, rgb: np.ndarray) -> None:
    for images in (digits[:20], rgb[:6]):
        for severity in SEVERITIES:
            a = corrupt(images, name, severity, np.random.default_rng(0))
            np.testing.assert_array_equal(a, corrupt(images, name, severity, np.random.default_rng(1)))


# Mean |corrupt(x) - x| on the first 100 digits, seeds 0 and 1, severities 1..5, as measured. The
# 8 -> 32 -> 8 px round trip is exact (pixel replication, then area averaging), so this is the corruption
# alone.
#   gaussian_noise     0.0106 0.0163 0.0221 0.0250 0.0280
#   shot_noise         0.0034 0.0047 0.0075 0.0087 0.0108
#   impulse_noise      0.0047 0.0090 0.0132 0.0213 0.0292
#   defocus_blur       0.0056 0.0148 0.0231 0.0286 0.0456
#   glass_blur         0.0421 0.0427 0.0465 0.0799 0.0818
#   motion_blur        0.0354 0.0595 0.0821 0.0821 0.1031   exception, see below
#   zoom_blur          0.0324 0.0429 0.0565 0.0684 0.0825
#   snow               0.0333 0.0743 0.0811 0.1184 0.1682
#   frost              0.0900 0.1336 0.1610 0.1526 0.1625   exception, see below
#   fog                0.0671 0.1350 0.1739 0.2031 0.2438
#   brightness         0.0426 0.0875 0.1311 0.1735 0.2510
#   contrast           0.0840 0.1683 0.2019 0.2356 0.2862
#   elastic_transform  0.1015 0.0898 0.0804 0.0729 0.0566   exception, see below
#   pixelate           0.0391 0.0416 0.0258 0.0000 0.0416   exception, see below
#   jpeg_compression   0.0024 0.0038 0.0043 0.0049 0.0069
# Exceptions, and why:
#   motion_blur s3 = s4: (radius, sigma) (6, 2) and (8, 2) give the same kernel, because ImageMagick's
#       weights exp(-i^2 / 8) are below 1e-9 past i = 12, so the longer radius adds nothing (the same seed
#       draws the same angles). The official table has this plateau.
#   frost s3 > s4: the image weight drops 0.9 -> 0.85 while the frost weight stays 0.4, so a pixel x under
#       frost f changes by 0.4f - 0.15x instead of 0.4f - 0.1x: less wherever the frost outweighs the
#       darkening (0.4f > 0.15x). Any bright frost, the photographs included, does this: it is the table's.
#   elastic_transform decreases throughout: the affine corner shift shrinks from 0.08 * 32 = 2.6 px to
#       0.03 * 32 = 1.0 px, while the elastic displacement that grows with severity stays under a pixel.
#   pixelate dips at s4: it box-resizes to 0.75 * 32 = 24 = 3 * 8 px, which lines up with the digits'
#       8-px grid and so undoes itself exactly (s4 is a no-op on digits); on 32-px images the table is
#       monotone (checked below).
EXCEPTIONS = ("motion_blur", "frost", "elastic_transform", "pixelate")


@pytest.mark.parametrize("name", [name for name in CORRUPTIONS if name not in EXCEPTIONS])
def test_change_increases_with_severity(name: str, changes: dict[str, np.ndarray]) -> None:
    assert np.all(np.diff(changes[name]) > 0), changes[name]


def test_motion_blur_severity_3_equals_4(changes: dict[str, np.ndarray]) -> None:
    change = changes["motion_blur"]
    assert abs(change[3] - change[2]) < 1e-4
    assert np.all(np.diff(change[[0, 1, 2, 4]]) > 0), change


def test_frost_dips_only_from_severity_3_to_4(changes: dict[str, np.ndarray]) -> None:
    change = changes["frost"]
    assert np.all(np.diff(change[[0, 1, 2]]) > 0) and change[4] > change[3], change
    assert -0.01 < change[3] - change[2] < 0.01
    assert change[4] > change[0] + 0.05


def test_elastic_transform_always_changes_digits(changes: dict[str, np.ndarray]) -> None:
    change = changes["elastic_transform"]
    assert np.all(change > 0.05), change
    assert change[0] > change[4]


def test_pixelate_dips_where_it_aligns_with_the_digit_grid(changes: dict[str, np.ndarray],
                                                           rgb: np.ndarray) -> None:
    assert np.argmin(changes["pixelate"]) == 3, changes["pixelate"]
    on_32px = np.array([_mean_change(rgb, "pixelate", s) for s in SEVERITIES])
    assert np.all(np.diff(on_32px) > 0), on_32px


def test_contrast_closed_form(rgb: np.ndarray) -> None:
    x = rgb / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)  # per image and channel, as the generator's axis=(0, 1)
    expected = (np.clip((x - means) * 0.75 + means, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(corrupt(rgb, "contrast", 1, np.random.default_rng(0)), expected)


def test_small_grey_images_go_through_32px(digits: np.ndarray) -> None:
    up = np.stack([cv2.resize(image / 255.0, (32, 32), interpolation=cv2.INTER_NEAREST) for image in digits])
    means = up.mean(axis=(1, 2), keepdims=True)
    out = np.clip((up - means) * 0.5 + means, 0, 1) * 255
    expected = np.stack([cv2.resize(image, (8, 8), interpolation=cv2.INTER_AREA) for image in out])
    got = corrupt(digits, "contrast", 2, np.random.default_rng(0))[..., 0]
    # the mean over three equal channels can differ from the channel by an ulp, flipping a truncation
    assert np.abs(got.astype(int) - expected.astype(np.uint8)).max() <= 1


def test_brightness(rgb: np.ndarray) -> None:
    means = [corrupt(rgb, "brightness", s, np.random.default_rng(0)).mean() for s in SEVERITIES]
    assert rgb.mean() < means[0] and np.all(np.diff(means) > 0)
    # a grey pixel has no saturation, so its HSV value, i.e. every channel, simply gains c
    grey = np.full((1, 32, 32, 3), 100, dtype=np.uint8)
    for severity, c in zip(SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3), strict=True):
        out = corrupt(grey, "brightness", severity, np.random.default_rng(0))
        assert np.all(out == int((100 / 255 + c) * 255))


def test_gaussian_noise_std() -> None:
    grey = np.full((16, 32, 32, 3), 128, dtype=np.uint8)
    out = corrupt(grey, "gaussian_noise", 5, np.random.default_rng(0)) / 255.0
    assert 0.09 < out.std() < 0.11
    assert abs(out.mean() - 128 / 255) < 0.01  # truncation shifts it down by half a level only


def test_impulse_noise_fraction() -> None:
    grey = np.full((20, 32, 32, 3), 128, dtype=np.uint8)
    out = corrupt(grey, "impulse_noise", 5, np.random.default_rng(0))
    assert abs(np.mean(out == 0) + np.mean(out == 255) - 0.07) < 0.01
    assert abs(np.mean(out == 0) - 0.035) < 0.007 and abs(np.mean(out == 255) - 0.035) < 0.007
    assert np.all((out == 0) | (out == 255) | (out == 128))


def test_pixelate_is_box_down_nearest_up(rgb: np.ndarray) -> None:
    out = corrupt(rgb, "pixelate", 3, np.random.default_rng(0))
    for image, got in zip(rgb, out, strict=True):
        small = cv2.resize(image / 255.0, (27, 27), interpolation=cv2.INTER_AREA)  # int(32 * 0.85)
        big = cv2.resize(small, (32, 32), interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(got, (np.clip(big, 0, 1) * 255 + 1e-6).astype(np.uint8))  # see corrupt()
        # blocky: some rows and columns repeat their neighbour
        assert np.unique(got, axis=0).shape[0] <= 27 and np.unique(got, axis=1).shape[1] <= 27


def test_jpeg_is_cv2_round_trip(rgb: np.ndarray) -> None:
    for severity, quality in zip(SEVERITIES, (80, 65, 58, 50, 40), strict=True):
        out = corrupt(rgb, "jpeg_compression", severity, np.random.default_rng(0))
        for image, got in zip(rgb, out, strict=True):
            _, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            np.testing.assert_array_equal(got, cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])
        assert not np.array_equal(out, rgb)


@pytest.mark.parametrize("name", ["fogg", "", "Gaussian Noise"])
def test_unknown_name(name: str, rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="valid choices") as error:
        corrupt(rgb, name, 1, np.random.default_rng(0))
    assert repr(name) in str(error.value) and all(valid in str(error.value) for valid in CORRUPTIONS)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True])
def test_unknown_severity(severity: object, rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="valid choices: 1, 2, 3, 4, 5") as error:
        corrupt(rgb, "fog", severity, np.random.default_rng(0))  # type: ignore[arg-type]
    assert repr(severity) in str(error.value)


def test_bad_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        corrupt(np.zeros((2, 32, 32, 3)), "fog", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        corrupt(np.zeros((2, 32, 32, 2), dtype=np.uint8), "fog", 1, np.random.default_rng(0))
