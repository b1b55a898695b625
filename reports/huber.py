"""The objective of the parametric fit: the Huber loss of log L against the law's log L̂, with its gradient.

    L̂(N, D) = E + A/N^α + B/D^β,   ln L̂ = logsumexp(a − α ln N, b − β ln D, e)   (a, b, e = ln A, ln B, ln E)
    objective(θ) = Σ_i w_i · Huber_δ(ln L̂_i − ln L_i),   δ = 1e-3

as Hoffmann et al. (2022, appendix D.2) and Besiroglu et al. (2024) fit it (the sum over points, not the
mean). `w_i` is 1, or the number of times point i was drawn in a bootstrap resample.

The optimizer works in centred coordinates: θ' = (a − α·m_N, b − β·m_D, e, α, β) with m_N, m_D the means
of ln N and ln D, so that the intercept and the exponent are not nearly collinear (ln N of real studies
spans 16..25, and a − α ln N moves along a long, thin valley in (a, α)). The minimizer is the same point;
`to_centred` and `from_centred` convert. Exponentiating the three terms directly (two `exp` per point
rather than logsumexp's three plus a log) is exact here: an overflow makes a trial step non-finite, and
the line search rejects it.

Everything is numpy, elementwise or summed along each row (einsum, never BLAS), so each row's arithmetic is
the same whatever else shares its batch: the batched minimizer's results do not depend on batching.
"""

from dataclasses import dataclass

import numpy as np

HUBER_DELTA = 1e-3
# The order of the five parameters in every array of the fit.
PARAMS = ("log_a", "log_b", "log_e", "alpha", "beta")


@dataclass(frozen=True, slots=True, eq=False)
class HuberObjective:
    """Values and gradients at many parameter vectors at once (the `Objective` of `reports.lbfgs`).

    `weights`, when given, holds one row of point weights per batch row (the bootstrap); `rows` passed to
    `__call__` index it.
    """

    centred_log_n: np.ndarray  # (n,) ln N − m_N
    centred_log_d: np.ndarray  # (n,) ln D − m_D
    log_loss: np.ndarray  # (n,) ln L
    mean_log_n: float
    mean_log_d: float
    weights: np.ndarray | None = None  # (rows, n)
    delta: float = HUBER_DELTA

    @classmethod
    def of(cls, n: np.ndarray, d: np.ndarray, loss: np.ndarray, weights: np.ndarray | None = None):
        log_n, log_d = np.log(np.asarray(n, dtype=np.float64)), np.log(np.asarray(d, dtype=np.float64))
        mean_log_n, mean_log_d = float(log_n.mean()), float(log_d.mean())
        return cls(
            centred_log_n=log_n - mean_log_n,
            centred_log_d=log_d - mean_log_d,
            log_loss=np.log(np.asarray(loss, dtype=np.float64)),
            mean_log_n=mean_log_n,
            mean_log_d=mean_log_d,
            weights=None if weights is None else np.asarray(weights, dtype=np.float64),
        )

    def with_weights(self, weights: np.ndarray | None) -> "HuberObjective":
        return HuberObjective(
            centred_log_n=self.centred_log_n,
            centred_log_d=self.centred_log_d,
            log_loss=self.log_loss,
            mean_log_n=self.mean_log_n,
            mean_log_d=self.mean_log_d,
            weights=weights,
            delta=self.delta,
        )

    def to_centred(self, theta: np.ndarray) -> np.ndarray:
        """(…, 5) parameters (ln A, ln B, ln E, α, β) → the optimizer's centred coordinates."""
        out = np.array(theta, dtype=np.float64, copy=True)
        out[..., 0] -= out[..., 3] * self.mean_log_n
        out[..., 1] -= out[..., 4] * self.mean_log_d
        return out

    def from_centred(self, centred: np.ndarray) -> np.ndarray:
        out = np.array(centred, dtype=np.float64, copy=True)
        out[..., 0] += out[..., 3] * self.mean_log_n
        out[..., 1] += out[..., 4] * self.mean_log_d
        return out

    def __call__(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f (k,), g (k, 5)) at centred parameters x (k, 5); non-finite where a term overflows."""
        a, b, e, alpha, beta = x.T
        xn, xd = self.centred_log_n, self.centred_log_d
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            term_n = np.exp(a[:, None] - alpha[:, None] * xn)  # A / N^α
            term_d = np.exp(b[:, None] - beta[:, None] * xd)  # B / D^β
            floor = np.exp(e)  # E
            predicted = term_n + term_d
            predicted += floor[:, None]
            residual = np.log(predicted)
            residual -= self.log_loss
            # Huber_δ(r) = c·(r − c/2) with c = clip(r, −δ, δ); its derivative is c.
            clipped = np.clip(residual, -self.delta, self.delta)
            residual -= 0.5 * clipped
            if self.weights is not None:
                clipped *= self.weights[rows]
            f = np.einsum("kn,kn->k", clipped, residual)
            clipped /= predicted  # dHuber/dL̂ = c / L̂; then the chain rule through each term
            term_n *= clipped
            term_d *= clipped
            g = np.stack(
                [
                    np.einsum("kn->k", term_n),
                    np.einsum("kn->k", term_d),
                    floor * np.einsum("kn->k", clipped),
                    -np.einsum("kn,n->k", term_n, xn),
                    -np.einsum("kn,n->k", term_d, xd),
                ],
                axis=1,
            )
        return f, g

    def predict_log(self, theta: np.ndarray) -> np.ndarray:
        """ln L̂ at every point for uncentred parameters θ (5,)."""
        log_a, log_b, log_e, alpha, beta = theta
        log_n = self.centred_log_n + self.mean_log_n
        log_d = self.centred_log_d + self.mean_log_d
        return np.logaddexp(np.logaddexp(log_a - alpha * log_n, log_b - beta * log_d), log_e)
