"""Channel tiles: the runtime's kernels compute channels in runs, so time steps, it does not slope.

XNNPACK's convolution kernels produce output channels in tiles (on a 2-core AMD EPYC with
TensorFlow 2.21: 16 for float32 and int8) and int8 kernels also read input channels in tiles
(8): a 1x1 convolution with 17 output channels takes as long as one with 32, and one with 16
as long as one with 4. A latency table timed at uniform widths (multiples of C/16) and
interpolated linearly in between therefore underestimates the networks a search selects,
whose widths are anything: ResNet50V2's random-width check was 10.6% slow on average, all
configurations one way. :func:`measure_tiles` finds the tiles by timing a 1x1 convolution over
a range of output and of input channel counts; the table keeps them and counts a unit's
channels as :func:`tiled` counts (rounded up to whole tiles, never above the full count).
"""

import os
import shutil
import tempfile

import numpy as np

CANDIDATES = (1, 2, 4, 8, 16, 32)
PROBE_CHANNELS = tuple(range(4, 69, 4))
PROBE_FIXED = 64  # the other channel axis of the probe convolution
PROBE_SIZE = 16  # its spatial size


def tiled(count, tile, full):
    """``count`` channels rounded up to whole tiles, at most ``full`` (numpy or floats)."""
    if tile <= 1:
        return count
    return np.minimum(np.ceil(np.asarray(count, np.float64) / tile - 1e-9) * tile, full)


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


def _probe(axis, channels):
    import keras

    shape = (PROBE_SIZE, PROBE_SIZE, PROBE_FIXED if axis == "out" else channels)
    x = keras.Input(shape, batch_size=1)
    return keras.Model(x, keras.layers.Conv2D(channels if axis == "out" else PROBE_FIXED, 1)(x))


def measure_tiles(dtype, num_threads, runs=100, progress=None):
    """``{"out": tile, "in": tile}`` of the runtime's convolution kernels at ``dtype``.

    Times a 1x1 convolution at :data:`PROBE_CHANNELS` output (then input) channels.
    """
    from pn_tf.latency.table import _convert, time_files

    directory = tempfile.mkdtemp(prefix="pn_tf_tiles_")
    try:
        paths, keys = [], []
        for axis in ("out", "in"):
            for c in PROBE_CHANNELS:
                paths.append(_convert(lambda axis=axis, c=c: _probe(axis, c),
                                      os.path.join(directory, f"{axis}_{c}.tflite"), dtype,
                                      f"the {axis}put-channel probe with {c} channels"))
                keys.append(axis)
        medians, _ = time_files(paths, num_threads, runs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    n = len(PROBE_CHANNELS)
    tiles = {"out": fit_tile(PROBE_CHANNELS, medians[:n]), "in": fit_tile(PROBE_CHANNELS, medians[n:])}
    if progress:
        progress(f"latency table: {dtype} kernels work on output channels in tiles of {tiles['out']}, "
                 f"input channels in tiles of {tiles['in']}")
    return tiles
