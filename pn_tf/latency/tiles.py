"""Channel tiles: the runtime's kernels compute channels in runs, so time steps, it does not slope.

XNNPACK's convolution kernels produce output channels in tiles (on a 2-core AMD EPYC with
TensorFlow 2.21: 16 for float32 and int8) and int8 kernels also read input channels in tiles
(8): a 1x1 convolution with 17 output channels takes as long as one with 32, and one with 16
as long as one with 4. A latency table timed at uniform widths (multiples of C/16) and
interpolated linearly in between therefore underestimates the networks a search selects,
whose widths are anything: in ResNet50V2's random-width check the estimate was 10.6% low on
average, every configuration the same way. :func:`pn_tf.latency.table.measure_tiles` finds the
tiles by timing a 1x1 convolution over a range of output and of input channel counts; the
table keeps them and counts a unit's channels as :func:`tiled` counts (rounded up to whole
tiles, never above the full count).
"""

import numpy as np

CANDIDATES = (1, 2, 4, 8, 16, 32)
PROBE_CHANNELS = tuple(range(4, 69, 4))
PROBE_FIXED = 64  # the other channel axis of the probe convolution
PROBE_SIZE = 16  # its spatial size


def tiled(count, tile, full):
    """``count`` channels rounded up to whole tiles, at most ``full`` (numpy or floats; ``tile``
    may be one per count); a tile of 1 leaves the count as it is."""
    if np.ndim(tile) == 0 and tile <= 1:
        return count
    count = np.asarray(count, np.float64)
    return np.where(np.asarray(tile) > 1, np.minimum(np.ceil(count / tile - 1e-9) * tile, full), count)


def fit_tile(channels, times, candidates=CANDIDATES):
    """The tile that best explains ``times`` as ``a + b * ceil(channels / tile)``.

    Least squares for each candidate; the smallest candidate within 5% of the best residual
    wins (probed at multiples of 4, tiles 1, 2 and 4 fit alike: no tile is assumed then).
    """
    channels, times = np.asarray(channels, np.float64), np.asarray(times, np.float64)
    residuals = []
    for tile in candidates:
        columns = np.stack([np.ones_like(channels), np.ceil(channels / tile)], axis=1)
        beta = np.linalg.lstsq(columns, times, rcond=None)[0]
        residuals.append(float(np.sum((columns @ beta - times) ** 2)))
    best = min(residuals)
    return next(t for t, r in zip(candidates, residuals) if r <= 1.05 * best + 1e-18)


def probe_model(axis, channels):
    """The probe: a batch-1 1x1 convolution with ``channels`` output (``axis="out"``) or input
    (``"in"``) channels and :data:`PROBE_FIXED` on the other side."""
    import keras

    shape = (PROBE_SIZE, PROBE_SIZE, PROBE_FIXED if axis == "out" else channels)
    x = keras.Input(shape, batch_size=1)
    return keras.Model(x, keras.layers.Conv2D(channels if axis == "out" else PROBE_FIXED, 1)(x))


PROBES = tuple((axis, c) for axis in ("out", "in") for c in PROBE_CHANNELS)


def tiles_from_times(times_ms):
    """``{"out": tile, "in": tile}`` from the probes' times, in the order of :data:`PROBES`
    (:func:`pn_tf.latency.table.measure_tiles` times them)."""
    n = len(PROBE_CHANNELS)
    return {"out": fit_tile(PROBE_CHANNELS, times_ms[:n]), "in": fit_tile(PROBE_CHANNELS, times_ms[n:])}
