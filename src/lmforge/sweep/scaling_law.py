"""Fit L(N, D) = E + A / N^alpha + B / D^beta to final losses, and the compute-optimal N and D.

The fit is Chinchilla's approach 3 (Hoffmann et al. 2022, appendix D.2): in log space, with
``a = log A``, ``b = log B``, ``e = log E``, minimise over the points

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),  delta = 1e-3

with scipy's bounded robust least squares when scipy is installed (Chinchilla used L-BFGS;
this minimises the same objective), else Levenberg-Marquardt in numpy, from the best
starts of a grid of initialisations, and keep the best local optimum. The parameters are bounded
(``BOUNDS``) so that a handful of points cannot send an exponent to infinity. Log space and the
Huber loss make the fit robust to an outlier rung; the grid of starts makes it less dependent
on one starting point, and how much the optima of the starts disagree (``spread``) and a
bootstrap over the points (``bootstrap``) say how much the few points pin the law down.

Plain numpy (and optional scipy): no torch, no config, so a KFP task or a notebook calls
``fit_scaling_law`` on rows of ``(N, D, loss)`` as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from lmforge.errors import TrainingError

HUBER_DELTA = 1e-3  # Chinchilla's
# Chinchilla's grid of initialisations (alpha, beta, e, a, b), as in appendix D.2.
GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
}
ORDER = ("alpha", "beta", "e", "a", "b")  # the parameter vector's layout
# Bounds: exponents in (0, 3]; A and B up to e^40; E from e^-5 up to the lowest loss (it is the
# loss no model and no data can beat, so it cannot be above a measured one).
BOUNDS = {"alpha": (1e-3, 3.0), "beta": (1e-3, 3.0), "e": (-5.0, None), "a": (-5.0, 40.0)}
BOUNDS["b"] = BOUNDS["a"]
# Published fit (Hoffmann et al. 2022, approach 3).
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


@dataclass
class ScalingLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        """The law's loss at ``n`` parameters and ``d`` tokens (scalars or arrays)."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """The N and D that minimise the loss under C = 6 N D (closed form):
        N = G (C/6)^(beta/(alpha+beta)), D = (C/6)^(alpha/(alpha+beta)) / G,
        G = (alpha A / (beta B))^(1/(alpha+beta))."""
        if not flops > 0:
            raise ValueError(f"a FLOPs budget must be > 0, got {flops!r}")
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        n = g * (flops / 6) ** (self.beta / s)
        return float(n), float(flops / 6 / n)


@dataclass
class ScalingFit:
    """The best fit, how well it fits, and how far the data pin it down."""

    law: ScalingLaw
    objective: float  # summed Huber loss of the best fit (log space)
    rmse_log: float  # root mean square of log L_fit - log L over the points
    n_points: int
    n_starts: int  # local fits, each from one start of the grid
    optimizer: str  # scipy least_squares (trf, huber) | numpy Levenberg-Marquardt
    # Spread over the starts whose optimum is within 10% of the best objective: min and max of
    # each parameter. A wide spread means several laws fit the points equally well.
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Bootstrap (points resampled with replacement, refitted): 5th and 95th percentiles.
    bootstrap: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_bootstrap: int = 0
    at_bounds: list[str] = field(default_factory=list)  # parameters stuck at a bound

    def to_dict(self) -> dict:
        return asdict(self)


def _objective(theta: np.ndarray, log_n, log_d, log_l, delta: float):
    """Summed Huber loss of the log-space residuals and its gradient."""
    alpha, beta, e, a, b = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    lse = top + np.log(total)
    weights /= total  # d lse / d term
    r = lse - log_l
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum()
    dr = np.where(small, r, delta * np.sign(r))
    grad = np.array(
        [
            -(dr * weights[0] * log_n).sum(),
            -(dr * weights[1] * log_d).sum(),
            (dr * weights[2]).sum(),
            (dr * weights[0]).sum(),
            (dr * weights[1]).sum(),
        ]
    )
    return float(value), grad


def _bounds(log_l: np.ndarray) -> list[tuple[float, float]]:
    out = []
    for name in ORDER:
        low, high = BOUNDS[name]
        out.append((low, float(log_l.min()) if high is None else high))
    return out


def _minimise_numpy(fun, x0, bounds, log_n, log_d, log_l, delta, iters: int = 500):
    """Levenberg-Marquardt on the Huber loss (each step reweights the residuals as iteratively
    reweighted least squares does), clipped to the bounds: scipy's L-BFGS-B where absent."""
    low, high = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    x = np.clip(np.asarray(x0, float), low, high)
    value, _ = fun(x)
    damping = 1e-3
    for _ in range(iters):
        r, jac = _residuals(x, log_n, log_d, log_l)
        w = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), 1e-300))
        jtj, jtr = jac.T @ (w[:, None] * jac), jac.T @ (w * r)
        while damping < 1e12:
            step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -jtr)
            trial = np.clip(x + step, low, high)
            new_value, _ = fun(trial)
            if new_value < value:
                break
            damping *= 10
        else:
            break
        done = value - new_value <= 1e-12 * max(1.0, value)
        x, value, damping = trial, new_value, max(damping / 10, 1e-9)
        if done:
            break
    return x, value


def _residuals(theta: np.ndarray, log_n, log_d, log_l) -> tuple[np.ndarray, np.ndarray]:
    """log L_fit - log L at each point, and its Jacobian (points x parameters)."""
    alpha, beta, e, a, b = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    weights /= total
    r = top + np.log(total) - log_l
    jac = np.stack([-weights[0] * log_n, -weights[1] * log_d, weights[2], weights[0], weights[1]])
    return r, jac.T


def _minimise(fun, x0, bounds, use_scipy: bool, data):
    """scipy's bounded robust least squares (trust region reflective; its ``huber`` loss with
    ``f_scale = delta`` is exactly the summed Huber loss above), else the numpy fallback."""
    if not use_scipy:
        return _minimise_numpy(fun, x0, bounds, *data)
    from scipy.optimize import least_squares

    log_n, log_d, log_l, delta = data
    low, high = [b[0] for b in bounds], [b[1] for b in bounds]
    x0 = np.clip(x0, np.array(low) + 1e-9, np.array(high) - 1e-9)  # strictly inside, for TRF
    res = least_squares(
        lambda t: _residuals(t, log_n, log_d, log_l)[0],
        x0,
        jac=lambda t: _residuals(t, log_n, log_d, log_l)[1],
        bounds=(low, high),
        loss="huber",
        f_scale=delta,
        method="trf",
    )
    return res.x, fun(res.x)[0]


def _grid_starts(log_n, log_d, log_l, delta, bounds, n_starts: int) -> np.ndarray:
    """The ``n_starts`` best points of the grid (by the objective, evaluated all at once)."""
    mesh = np.meshgrid(*(GRID[k] for k in ORDER), indexing="ij")
    starts = np.stack([m.ravel() for m in mesh], axis=1)
    low, high = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    starts = np.unique(np.clip(starts, low, high), axis=0)
    alpha, beta, e, a, b = (starts[:, i : i + 1] for i in range(5))
    lse = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)  # (starts, points)
    r = np.abs(lse - log_l)
    values = np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)).sum(axis=1)
    return starts[np.argsort(values, kind="stable")[:n_starts]]


def _fit_arrays(log_n, log_d, log_l, delta, n_starts, use_scipy, also=None):
    """Local fits from the ``n_starts`` best grid points (and from ``also``, a known optimum)."""
    bounds = _bounds(log_l)
    starts = _grid_starts(log_n, log_d, log_l, delta, bounds, n_starts)
    if also is not None:
        low, high = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
        starts = np.vstack([np.clip(also, low, high), starts])

    def fun(theta):
        return _objective(theta, log_n, log_d, log_l, delta)

    data = (log_n, log_d, log_l, delta)
    optima = [_minimise(fun, x0, bounds, use_scipy, data) for x0 in starts]
    return optima, bounds


def _law(theta: np.ndarray) -> ScalingLaw:
    alpha, beta, e, a, b = (float(v) for v in theta)
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _arrays(rows: Iterable[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = np.array([[float(v) for v in row[:3]] for row in rows], dtype=float)
    if table.ndim != 2 or len(table) < 5:
        raise TrainingError(
            f"a scaling-law fit needs at least 5 points (N, D, loss) for its 5 parameters, got "
            f"{len(table)}; add sizes or budgets to the ladder"
        )
    if not np.isfinite(table).all() or (table <= 0).any():
        raise TrainingError("every N, D and loss of a scaling-law fit must be finite and > 0")
    if len(np.unique(table[:, 0])) < 2 or len(np.unique(table[:, 1])) < 2:
        raise TrainingError("a scaling-law fit needs at least 2 distinct N and 2 distinct D")
    return np.log(table[:, 0]), np.log(table[:, 1]), np.log(table[:, 2])


def fit_scaling_law(
    rows: Iterable[Sequence[float]],
    *,
    n_starts: int = 16,
    n_bootstrap: int = 0,
    seed: int = 0,
    delta: float = HUBER_DELTA,
    use_scipy: bool | None = None,
) -> ScalingFit:
    """Fit the law to ``rows`` of ``(N, D, loss)`` (N: parameters, D: tokens, loss: nats).

    ``n_starts``: local fits, from the best points of Chinchilla's grid; ``n_bootstrap``:
    refits on resampled points, for the 5-95% range of each parameter; ``use_scipy``: None
    uses scipy when it is installed."""
    if use_scipy is None:
        try:
            import scipy.optimize  # noqa: F401
        except ImportError:
            use_scipy = False
        else:
            use_scipy = True
    log_n, log_d, log_l = _arrays(list(rows))
    optima, bounds = _fit_arrays(log_n, log_d, log_l, delta, n_starts, use_scipy)
    best_x, best_value = min(optima, key=lambda o: o[1])
    law = _law(best_x)
    fitted = np.log(law.loss(np.exp(log_n), np.exp(log_d)))
    near = [_law(x) for x, v in optima if v <= best_value * 1.1 + 1e-15]
    names = ("E", "A", "B", "alpha", "beta")
    spread = {
        k: (min(getattr(p, k) for p in near), max(getattr(p, k) for p in near)) for k in names
    }
    at_bounds = [
        name
        for name, value, (low, high) in zip(ORDER, best_x, bounds, strict=True)
        if math.isclose(value, low, abs_tol=1e-6) or math.isclose(value, high, abs_tol=1e-6)
    ]
    fit = ScalingFit(
        law=law,
        objective=best_value,
        rmse_log=float(np.sqrt(np.mean((fitted - log_l) ** 2))),
        n_points=len(log_l),
        n_starts=len(optima),
        optimizer="scipy least_squares (trf, huber)" if use_scipy else "numpy Levenberg-Marquardt",
        spread=spread,
        at_bounds=at_bounds,
    )
    if n_bootstrap:
        fit.bootstrap = _bootstrap(log_n, log_d, log_l, delta, n_bootstrap, seed, use_scipy, best_x)
        fit.n_bootstrap = n_bootstrap
    return fit


def _bootstrap(
    log_n, log_d, log_l, delta, n, seed, use_scipy, best
) -> dict[str, tuple[float, float]]:
    """Refit on points drawn with replacement, each from the full data's optimum and the 3
    best grid starts (to keep it cheap); resamples with fewer than 2 distinct N or D cannot
    be fitted and are redrawn."""
    rng = np.random.default_rng(seed)
    laws: list[ScalingLaw] = []
    tries = 0
    while len(laws) < n and tries < 20 * n:
        tries += 1
        idx = rng.integers(0, len(log_l), len(log_l))
        if len(np.unique(log_n[idx])) < 2 or len(np.unique(log_d[idx])) < 2:
            continue
        optima, _ = _fit_arrays(log_n[idx], log_d[idx], log_l[idx], delta, 3, use_scipy, best)
        laws.append(_law(min(optima, key=lambda o: o[1])[0]))
    out = {}
    for k in ("E", "A", "B", "alpha", "beta"):
        values = np.array([getattr(p, k) for p in laws])
        out[k] = (float(np.percentile(values, 5)), float(np.percentile(values, 95)))
    return out
