"""95% percentile intervals over bootstrap resamples, the one kind of interval the fits report."""

import warnings

import numpy as np

Interval = tuple[float, float]


def percentile_interval(samples) -> Interval:
    """The 2.5th and 97.5th percentiles along the last axis, ignoring NaN.

    Floats for a 1-D input, arrays for more dimensions; NaN where no sample is a number. The low end is the
    sample just below the 2.5th percentile and the high end the one just above the 97.5th (no
    interpolation), so that a resample that ran off to infinity widens the interval to infinity rather
    than vanishing from it.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[-1] == 0:
        samples = np.full((*samples.shape[:-1], 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row gives NaN, as it should
        low = np.nanpercentile(samples, 2.5, axis=-1, method="lower")
        high = np.nanpercentile(samples, 97.5, axis=-1, method="higher")
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)
