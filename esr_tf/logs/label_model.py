"""A latent-label click model: how sure the logs are of each pair's label, fitted by EM.

Every logged (query, product) has one unknown label z (E, S, C, I). An examined product is
clicked with probability `click[z]`, a click goes to the cart with `cart[z]` and a cart is bought
with `purchase[z]`; position k is examined with the propensity `theta[k]` (estimated beforehand,
`estimate_propensities`). Expectation-maximisation over the pairs' counts (the examination of an
unclicked impression is a latent variable too, as in the position-based model) gives each pair's
posterior over the labels. Thresholds on rates (`LogLabelConfig.codes`) ignore how many times a
pair was seen: at 20,000 simulated sessions a Substitute seen 18 times clears the Exact click
threshold by chance; the posterior weighs that evidence against the other labels' rates.

Two choices keep the fit from collapsing, and say what the model assumes:
- the labels start from the rules' labels (each label's rates from the pairs the rules give it),
  and each rate keeps `PRIOR_STRENGTH` pseudo-observations at that start: the labels keep their
  meaning (Exact the most clicked, Irrelevant the least) instead of trading places;
- the prior over labels is uniform, not fitted: a fitted prior lets the commonest label swallow
  every pair seen once or twice (random products shown deep in a list), whose posterior should
  instead stay flat, as their weight (expected examinations) is small anyway.

Example:
>>> posts = fit_label_model(np.array([0, 1]), np.array([20, 20]), np.array([18, 1]), np.zeros(2),
...                         np.zeros(2), np.ones(2), np.array([0, 3]), 2).posteriors
>>> posts.argmax(axis=1).tolist()
[0, 3]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABELS = 4  # E, S, C, I: the order of the rules' codes and of the outputs
PRIOR_STRENGTH = 100.0  # pseudo-observations that hold each rate near the rules' estimate
TINY = 1e-6
# Where the rules give a label no pair, its start: click rates between the rules' neighbours.
FALLBACK_CLICK = (0.9, 0.45, 0.2, 0.03)


@dataclass
class LabelModel:
    """The fit: per pair its posterior [P, 4]; per label its rates; EM iterations run."""

    posteriors: np.ndarray
    click: np.ndarray
    cart: np.ndarray
    purchase: np.ndarray
    iterations: int

    def summary(self) -> dict:
        """The fitted rates per label (for `weak_labels.json`)."""
        return {"click": self.click.round(4).tolist(), "cart": self.cart.round(4).tolist(),
                "purchase": self.purchase.round(4).tolist(), "iterations": self.iterations}


def _rates(resp, pair_clicks, pair_carts, pair_buys, examined) -> tuple[np.ndarray, ...]:
    """Each label's (click, cart, purchase) count pairs from responsibilities `resp` [P, 4]:
    (numerator, denominator) sums; `examined` [P, 4] the expected examinations under each label."""
    return ((resp * pair_clicks[:, None]).sum(0), (resp * examined).sum(0),
            resp.T @ pair_carts, resp.T @ pair_clicks, resp.T @ pair_buys, resp.T @ pair_carts)


def _start(resp, pair_clicks, pair_carts, pair_buys, looks) -> tuple[np.ndarray, ...]:
    """The rules' rates per label: (click, cart, purchase) [4] each, empty labels from `FALLBACK_CLICK`."""
    click_n, click_d, cart_n, cart_d, buy_n, buy_d = _rates(resp, pair_clicks, pair_carts, pair_buys,
                                                           resp * looks[:, None])
    pooled_cart = pair_carts.sum() / max(pair_clicks.sum(), 1.0)
    pooled_buy = pair_buys.sum() / max(pair_carts.sum(), 1.0)
    empty = resp.sum(0) == 0
    click = np.where(empty | (click_d == 0), FALLBACK_CLICK, click_n / np.maximum(click_d, TINY))
    cart = np.where(cart_d == 0, pooled_cart, cart_n / np.maximum(cart_d, TINY))
    buy = np.where(buy_d == 0, pooled_buy, buy_n / np.maximum(buy_d, TINY))
    return tuple(np.clip(x, TINY, 1 - TINY) for x in (click, cart, buy))


def fit_label_model(pairs: np.ndarray, shown: np.ndarray, clicked: np.ndarray, carted: np.ndarray,
                    bought: np.ndarray, theta: np.ndarray, start: np.ndarray, size: int, *,
                    iterations: int = 200, tolerance: float = 1e-6) -> LabelModel:
    """EM over impressions folded per (pair, position) (see the module docstring).

    Args:
        pairs: each entry's pair number (0..size-1); shown / clicked / carted / bought: its counts;
        theta: the examination probability of each entry's position (1 everywhere: uncorrected);
        start: each pair's label by the rules (0..3, E S C I).
    """
    shown, clicked = np.asarray(shown, np.float64), np.asarray(clicked, np.float64)
    theta = np.clip(np.asarray(theta, np.float64), TINY, 1.0)
    pair_clicks = np.bincount(pairs, clicked, size)
    pair_carts = np.bincount(pairs, np.asarray(carted, np.float64), size)
    pair_buys = np.bincount(pairs, np.asarray(bought, np.float64), size)
    resp = np.eye(LABELS)[np.asarray(start)]
    prior = _start(resp, pair_clicks, pair_carts, pair_buys, np.bincount(pairs, shown * theta, size))
    click, cart, buy = prior
    unclicked = shown - clicked
    done = 0
    while done < iterations:
        done += 1
        missed = 1.0 - theta[:, None] * click[None, :]  # [entries, 4]
        loglik = (np.log(theta[:, None] * click[None, :]) * clicked[:, None] + np.log(missed) * unclicked[:, None])
        loglik = np.stack([np.bincount(pairs, loglik[:, z], size) for z in range(LABELS)], 1)
        loglik += (pair_carts[:, None] * np.log(cart) + (pair_clicks - pair_carts)[:, None] * np.log(1 - cart)
                   + pair_buys[:, None] * np.log(buy) + (pair_carts - pair_buys)[:, None] * np.log(1 - buy))
        new = np.exp(loglik - loglik.max(axis=1, keepdims=True))
        new /= new.sum(axis=1, keepdims=True)
        change, resp = np.abs(new - resp).max(), new
        # An unclicked impression was examined with P(theta (1 - click) / (1 - theta click)).
        looked = clicked[:, None] + unclicked[:, None] * theta[:, None] * (1 - click[None, :]) / missed
        examined = np.stack([np.bincount(pairs, looked[:, z], size) for z in range(LABELS)], 1)
        click_n, click_d, cart_n, cart_d, buy_n, buy_d = _rates(resp, pair_clicks, pair_carts, pair_buys, examined)
        click = (click_n + PRIOR_STRENGTH * prior[0]) / (click_d + PRIOR_STRENGTH)
        cart = (cart_n + PRIOR_STRENGTH * prior[1]) / (cart_d + PRIOR_STRENGTH)
        buy = (buy_n + PRIOR_STRENGTH * prior[2]) / (buy_d + PRIOR_STRENGTH)
        click, cart, buy = (np.clip(x, TINY, 1 - TINY) for x in (click, cart, buy))
        if change < tolerance:
            break
    return LabelModel(resp, click, cart, buy, done)
