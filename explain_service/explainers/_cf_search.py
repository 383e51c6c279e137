"""Sparse, constraint-respecting counterfactual search over a model's raw features.

A candidate is a row of *codes*: the value itself for numeric, integer and
boolean features (0/1) and the category's index for categorical ones. The
search runs in rounds, each scored by a single batched model call:

1. every allowed one-feature change from a grid of background quantiles,
   steps around the instance and the allowed bounds, coarse two-feature
   changes, and the instance itself (to learn its current prediction);
2. while too few distinct valid changes are known, a beam of the most
   promising invalid candidates grows by one more feature per round;
3. a pool of valid candidates, picked for low cost and diversity, is refined
   in one call: each changed feature is reverted alone and each numeric change
   is shrunk towards the instance; the cheapest valid variant of each wins.

Every candidate is built only from allowed values, so constraints hold by
construction; the validity of what is returned comes from the final model
call on exactly those rows.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from explain_service.deadline import check_deadline
from explain_service.explainers._tabular import FeatureStats, make_frame, model_output
from explain_service.explainers.base import ModelLike
from explain_service.metrics import BUDGET_REASON

BEAM_WIDTH = 12
BEAM_PER_FEATURE_SET = 2
MAX_ROUND_ROWS = 6_000
MAX_POOL = 128
MAX_PAIR_ROWS = 2_000
REFINE_FACTOR = 4  # refine this many candidates per counterfactual asked for
DIVERSITY_WEIGHT = 0.5  # how much distance to already chosen counterfactuals buys against cost
REPEAT_PENALTY = 0.5  # cost of changing exactly the same features as an already chosen counterfactual
_STEPS = np.array([-2.0, -1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 2.0])
_SHRINK = np.array([0.1, 0.25, 0.5, 0.75])
# A class counts as reached only when it leads by more than this, so that a re-score of the same row in a
# different batch (different floating-point summation order) cannot flip the label.
_MARGIN = 1e-9


@dataclass(frozen=True)
class Rule:
    """The resolved constraint of one feature: may it change, which way, and within which bounds."""

    mutable: bool = True
    direction: str | None = None
    low: float = -np.inf
    high: float = np.inf
    forbidden: frozenset[int] = frozenset()  # category indices never proposed


@dataclass(frozen=True)
class Goal:
    """What makes a candidate valid: reaching class ``target``, or a value in [low, high]."""

    target: int | None = None
    low: float = -np.inf
    high: float = np.inf

    def valid(self, out: np.ndarray) -> np.ndarray:
        """Rows of ``out`` that meet the goal; a class must win by more than rounding noise."""
        if self.target is not None:
            return (np.argmax(out, axis=1) == self.target) & (self.progress(out) > _MARGIN)
        return (out[:, 0] >= self.low) & (out[:, 0] <= self.high)

    def progress(self, out: np.ndarray) -> np.ndarray:
        """Higher is closer to valid: the target's margin over the best other class, or minus the gap."""
        if self.target is not None:
            others = np.delete(out, self.target, axis=1)
            return out[:, self.target] - others.max(axis=1)
        y = out[:, 0]
        return -np.maximum(np.maximum(self.low - y, y - self.high), 0.0)


@dataclass
class Found:
    """The search's answer: chosen codes with their model outputs, and why it stopped short, if it did."""

    codes: np.ndarray
    outputs: np.ndarray
    reason: str | None = None


def _none(space: Space) -> np.ndarray:
    return np.empty((0, len(space.x)))


def _spread(ranked: np.ndarray, k: int) -> np.ndarray:
    """``k`` entries spread evenly over ``ranked`` (first and last included)."""
    if len(ranked) <= k:
        return ranked
    return ranked[np.unique(np.linspace(0, len(ranked) - 1, k).round().astype(int))]


class Space:
    """The instance, its codes and every allowed single change."""

    def __init__(self, stats: tuple[FeatureStats, ...], row: dict[str, Any], rules: list[Rule]) -> None:
        self.stats = stats
        self.row = row
        self.discrete = np.array([not st.feature.is_numeric for st in stats])
        self.unit = np.array([1.0 if d else st.mad for st, d in zip(stats, self.discrete, strict=True)])
        self.x = np.array([self._code(st, row[st.name]) for st in stats], dtype=float)
        feats, vals = [], []
        for j, (st, rule) in enumerate(zip(stats, rules, strict=True)):
            allowed = self._allowed(st, rule, self.x[j]) if rule.mutable else np.array([])
            feats.append(np.full(len(allowed), j))
            vals.append(allowed)
        self.single_feature = np.concatenate(feats).astype(int) if feats else np.array([], dtype=int)
        self.single_value = np.concatenate(vals).astype(float) if vals else np.array([])
        self.rules = rules

    @staticmethod
    def _code(st: FeatureStats, value: Any) -> float:
        if value is None:
            return np.nan
        if st.kind == "categorical":
            return float(st.index_of(str(value)))
        return float(value)

    @staticmethod
    def _allowed(st: FeatureStats, rule: Rule, x: float) -> np.ndarray:
        if np.isnan(x):
            # A missing value stays missing: the search neither fills it in nor blanks a present one.
            return np.array([])
        if st.kind == "categorical":
            assert st.values is not None
            return np.array([float(i) for i in range(len(st.values)) if i != x and i not in rule.forbidden])
        if st.kind == "boolean":
            other = 1.0 - x
            if (rule.direction == "increase" and other < x) or (rule.direction == "decrease" and other > x):
                return np.array([])
            return np.array([other])
        lo, hi = allowed_bounds(st, rule, x)
        assert st.grid is not None
        values = np.concatenate([st.grid, _round(st, x + _STEPS * st.mad), [lo, hi]])
        values = values[np.isfinite(values) & (values >= lo) & (values <= hi) & (values != x)]
        return np.unique(values)

    def frame(self, codes: np.ndarray) -> pd.DataFrame:
        """Decode candidate codes into a model-ready frame."""
        columns: dict[str, np.ndarray] = {}
        for j, st in enumerate(self.stats):
            col = codes[:, j]
            if st.kind == "categorical":
                assert st.values is not None
                idx = col.astype(int)
                out = st.values[np.maximum(idx, 0)].copy()
                out[(idx < 0) | np.isnan(col)] = self.row[st.name]
                columns[st.name] = out
            elif st.kind == "boolean":
                columns[st.name] = (
                    np.where(np.isnan(col), np.nan, col > 0.5) if st.feature.missing else col > 0.5
                )
            else:
                columns[st.name] = col
        return make_frame(tuple(st.feature for st in self.stats), columns)

    def decode(self, code: np.ndarray) -> dict[str, Any]:
        """One candidate as a ``{feature: plain value}`` dict, decoded exactly as ``frame`` does."""
        out: dict[str, Any] = {}
        for st, c in zip(self.stats, code.tolist(), strict=True):
            if c != c:
                out[st.name] = None
            elif st.kind == "categorical":
                assert st.values is not None
                out[st.name] = str(st.values[int(c)]) if c >= 0 else self.row[st.name]
            elif st.kind == "boolean":
                out[st.name] = c > 0.5
            elif st.kind == "integer":
                out[st.name] = int(np.rint(c))
            else:
                out[st.name] = float(c)
        return out

    def changed(self, codes: np.ndarray) -> np.ndarray:
        """Features each candidate changes (a missing value kept missing is unchanged)."""
        return (codes != self.x) & ~(np.isnan(codes) & np.isnan(self.x))

    def distance(self, codes: np.ndarray, to: np.ndarray) -> np.ndarray:
        """Numeric differences in MAD units plus one per categorical or boolean mismatch."""
        diff = np.nan_to_num(np.abs(codes - to), nan=0.0)  # missing values never change
        return np.where(self.discrete, diff != 0, diff / self.unit).sum(axis=-1)


def _round(st: FeatureStats, values: np.ndarray) -> np.ndarray:
    return values if st.decimals is None else np.round(values, st.decimals)


def allowed_bounds(st: FeatureStats, rule: Rule, x: float) -> tuple[float, float]:
    """Closed bounds a numeric feature may move within: observed range, rule range and direction."""
    lo, hi = max(st.low, rule.low), min(st.high, rule.high)
    if rule.direction == "increase":
        lo = max(lo, x)
    elif rule.direction == "decrease":
        hi = min(hi, x)
    if st.kind == "integer":
        lo, hi = float(np.ceil(lo)), float(np.floor(hi))
    return lo, hi


class Search:
    """One row's counterfactual search; see the module docstring for the rounds."""

    def __init__(self, model: ModelLike, space: Space, seed: int, deadline: float, max_changes: int) -> None:
        self.model = model
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.deadline = deadline
        self.max_changes = max_changes
        self._first: np.ndarray | None = None
        self._first_out: np.ndarray | None = None

    def _score(self, codes: np.ndarray) -> np.ndarray:
        return model_output(self.model, self.space.frame(codes))

    def start(self) -> np.ndarray:
        """Score the instance, every single change and coarse pairs in one call; return the instance's output."""
        sp = self.space
        singles = np.tile(sp.x, (len(sp.single_feature), 1))
        singles[np.arange(len(singles)), sp.single_feature] = sp.single_value
        first = np.vstack([singles, self._coarse_pairs()]) if self.max_changes >= 2 else singles
        out = self._score(np.vstack([first, sp.x[None, :]]))
        self._first, self._first_out = first, out[:-1]
        return out[-1]

    def _coarse_pairs(self) -> np.ndarray:
        """Two-feature changes from a few values per feature (small, medium and large moves, or the most
        common other categories), so that the first call already sees combinations."""
        sp = self.space
        picks = []
        for j in range(len(sp.x)):
            idx = np.flatnonzero(sp.single_feature == j)
            if len(idx) == 0:
                continue
            if sp.discrete[j]:
                st = sp.stats[j]
                freq = (
                    st.freqs[sp.single_value[idx].astype(int)] if st.freqs is not None else np.zeros(len(idx))
                )
                ranked = idx[np.argsort(-freq, kind="stable")]
            else:
                ranked = idx[np.argsort(np.abs(sp.single_value[idx] - sp.x[j]), kind="stable")]
            picks.append(ranked)
        for per_feature in (3, 2, 1):
            chosen = [_spread(r, per_feature) for r in picks]
            sizes = [len(c) for c in chosen]
            total = (sum(sizes) ** 2 - sum(z * z for z in sizes)) // 2
            if total <= MAX_PAIR_ROWS:
                break
        else:
            return np.empty((0, len(sp.x)))
        pairs = [
            np.array(list(itertools.product(chosen[a], chosen[b])), dtype=int).reshape(-1, 2)
            for a, b in itertools.combinations(range(len(chosen)), 2)
        ]
        if not pairs:
            return np.empty((0, len(sp.x)))
        both = np.vstack(pairs)
        rows = np.tile(sp.x, (len(both), 1))
        for side in (0, 1):
            rows[np.arange(len(rows)), sp.single_feature[both[:, side]]] = sp.single_value[both[:, side]]
        return rows

    def run(self, goal: Goal, count: int) -> Found:
        """Search on from the first call's candidates towards ``goal``; return up to ``count`` of them."""
        assert self._first is not None and self._first_out is not None
        sp = self.space
        if len(self._first) == 0:
            return Found(_none(sp), _none(sp), "no feature may change under the constraints")
        seen = {row.tobytes() for row in self._first}
        ok = goal.valid(self._first_out)
        valid_codes = [self._first[ok]]
        frontier, frontier_out = self._first[~ok], self._first_out[~ok]
        reason = None
        while self._feature_sets(np.vstack(valid_codes)) < count:
            growable = sp.changed(frontier).sum(axis=1) < self.max_changes
            frontier, frontier_out = frontier[growable], frontier_out[growable]
            if len(frontier) == 0:
                reason = f"no other valid change within {self.max_changes} changed features"
                break
            if time.perf_counter() >= self.deadline:
                reason = BUDGET_REASON
                break
            check_deadline()
            grown = self._grow(self._beam(frontier, frontier_out, goal), seen)
            if len(grown) == 0:
                reason = "the search space is exhausted"
                break
            out = self._score(grown)
            ok = goal.valid(out)
            valid_codes.append(grown[ok])
            frontier, frontier_out = grown[~ok], out[~ok]
        pool = np.vstack(valid_codes)
        if len(pool) == 0:
            return Found(_none(sp), _none(sp), reason or "no valid change found")
        # The refinement call scores the returned rows themselves: their outputs come from that call.
        codes, outputs = self._refine(self._select(pool, REFINE_FACTOR * count), goal)
        chosen = self._select(codes, count)
        index = {row.tobytes(): i for i, row in enumerate(codes)}
        picked = [index[row.tobytes()] for row in chosen]
        return Found(codes[picked], outputs[picked], reason)

    def _feature_sets(self, valid: np.ndarray) -> int:
        return len({row.tobytes() for row in self.space.changed(valid)})

    def _beam(self, codes: np.ndarray, out: np.ndarray, goal: Goal) -> np.ndarray:
        """The most promising invalid candidates, at most two per set of changed features."""
        if len(codes) == 0:
            return codes
        sp = self.space
        cost = sp.distance(codes, sp.x)
        order = np.lexsort((self.rng.random(len(codes)), cost, -goal.progress(out)))
        per_set: dict[bytes, int] = {}
        width = max(1, min(BEAM_WIDTH, MAX_ROUND_ROWS // max(len(sp.single_feature), 1)))
        keep = []
        for i in order:
            key = sp.changed(codes[i]).tobytes()
            if per_set.get(key, 0) < BEAM_PER_FEATURE_SET:
                per_set[key] = per_set.get(key, 0) + 1
                keep.append(i)
                if len(keep) == width:
                    break
        return codes[keep]

    def _grow(self, beam: np.ndarray, seen: set[bytes]) -> np.ndarray:
        """Every beam entry plus one allowed change of a feature it has not changed yet."""
        sp = self.space
        if len(beam) == 0:
            return beam
        b = np.repeat(np.arange(len(beam)), len(sp.single_feature))
        s = np.tile(np.arange(len(sp.single_feature)), len(beam))
        fresh = ~sp.changed(beam)[b, sp.single_feature[s]]
        b, s = b[fresh], s[fresh]
        grown = beam[b].copy()
        grown[np.arange(len(grown)), sp.single_feature[s]] = sp.single_value[s]
        keep = []
        for i, row in enumerate(grown):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                keep.append(i)
        return grown[keep]

    def _variants(self, code: np.ndarray) -> list[np.ndarray]:
        """Cheaper neighbours of a valid candidate: one change reverted, or one numeric change shrunk."""
        sp = self.space
        out = []
        changed = np.flatnonzero(sp.changed(code))
        for j in changed:
            if len(changed) > 1:
                reverted = code.copy()
                reverted[j] = sp.x[j]
                out.append(reverted)
            st = sp.stats[j]
            if st.feature.is_numeric:
                values = _round(st, sp.x[j] + _SHRINK * (code[j] - sp.x[j]))
                lo, hi = allowed_bounds(st, sp.rules[j], sp.x[j])
                for v in np.unique(values[(values != sp.x[j]) & (values != code[j])]):
                    if lo <= v <= hi:
                        shrunk = code.copy()
                        shrunk[j] = v
                        out.append(shrunk)
        return out

    def _refine(self, pool: np.ndarray, goal: Goal) -> tuple[np.ndarray, np.ndarray]:
        """Score ``pool`` and its cheaper variants in one call; keep the cheapest valid one per entry."""
        sp = self.space
        groups = [[code, *self._variants(code)] for code in pool]
        flat = np.vstack([c for g in groups for c in g])
        out = self._score(flat)
        ok = goal.valid(out)
        n_changed = sp.changed(flat).sum(axis=1)
        cost = sp.distance(flat, sp.x)
        best, start = [], 0
        for g in groups:
            idx = np.arange(start, start + len(g))
            start += len(g)
            idx = idx[ok[idx]]
            if len(idx):
                best.append(idx[np.lexsort((cost[idx], n_changed[idx]))[0]])
        if not best:
            return np.empty((0, len(sp.x))), np.empty((0, out.shape[1]))
        codes, outputs = flat[best], out[best]
        _, first = np.unique(codes, axis=0, return_index=True)
        first = np.sort(first)
        return codes[first], outputs[first]

    def _select(self, pool: np.ndarray, k: int) -> np.ndarray:
        """Greedy diverse choice: cheapest first, then the best trade of distance to the chosen against cost.

        Only the ``MAX_POOL`` cheapest candidates compete, and a candidate whose changes include all of
        another's (same values) and more is dropped.
        """
        sp = self.space
        if len(pool) == 0:
            return pool
        pool = np.unique(pool, axis=0)
        n_changed = sp.changed(pool).sum(axis=1)
        cost = sp.distance(pool, sp.x)
        order = np.lexsort((self.rng.random(len(pool)), cost, n_changed))[:MAX_POOL]
        pool, cost = pool[order], cost[order]
        changed = sp.changed(pool)
        # covers[i, r]: candidate r makes every change candidate i makes, with the same values.
        covers = ((pool[None, :, :] == pool[:, None, :]) | ~changed[:, None, :]).all(axis=2)
        more = changed.sum(axis=1)[None, :] > changed.sum(axis=1)[:, None]
        keep = ~(covers & more).any(axis=0)
        pool, cost, changed = pool[keep], cost[keep], changed[keep]
        chosen = [0]
        nearest = sp.distance(pool, pool[0])
        repeats = (changed == changed[0]).all(axis=1)
        while len(chosen) < min(k, len(pool)):
            gain = DIVERSITY_WEIGHT * nearest - cost - REPEAT_PENALTY * repeats
            gain[chosen] = -np.inf
            nxt = int(np.argmax(gain))
            chosen.append(nxt)
            nearest = np.minimum(nearest, sp.distance(pool, pool[nxt]))
            repeats |= (changed == changed[nxt]).all(axis=1)
        return pool[chosen]
