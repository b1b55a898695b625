"""95% percentile intervals over bootstrap resamples, the one kind of interval the fits report."""

import warnings

import numpy as np

Interval = tuple[float, float]


def percentile_interval(samples) -> Interval:
    """The 2.5th and 97.5th percentiles along the last axis, ignoring non-finite values.

    Floats for a 1-D input, arrays for more dimensions; NaN where no sample is finite.
    """
    samples = np.asarray(samples, dtype=np.float64)
    finite = np.where(np.isfinite(samples), samples, np.nan)
    if samples.shape[-1] == 0:
        finite = np.full((*samples.shape[:-1], 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row gives NaN, as it should
        low, high = np.nanpercentile(finite, [2.5, 97.5], axis=-1)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)
