"""The frequency-aware global table: namespaced features, decayed scores,
admission, eviction under a budget, hot/cold relayout, statistics.

One :class:`FrequencyTable` serves many sparse features (Kraken's global
shared table). Rows are spent only on keys that earn them, and a relayout
packs the hottest rows at the start of the row arena. See docs/frequency.md.

Quick start::

    import numpy as np, embedlookup as el
    t = el.FrequencyTable(64, budget_rows=1_000_000, policy="lfu", half_life=500,
                          admit_count=2, features=["user", "item"])
    out = t.pooled_lookup(values, offsets, feature="item")      # trains: scores, admits, evicts
    t.apply_gradients(values, grads, el.optim.Adagrad(lr=0.05), feature="item")
    t.relayout_step(65536)      # bounded pause; call once per step until it returns 0
    t.stats()
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from . import _checks, _core
from ._namespace import feature_keys
from . import init as _init
from . import quantize as _quantize
from .optim import Optimizer
from .table import EmbeddingTable, ForwardIds, _forward_ids_mode, _table_options

__all__ = ["FrequencyTable", "POLICIES", "FEATURE_SHIFT", "MAX_FEATURES"]

POLICIES = {"none": 0, "lfu": 1, "lru": 2, "ttl": 3}
DEFAULT_ROWS = {"zeros": 0, "cold": 1}
#: Namespaced keys are ``feature_id << FEATURE_SHIFT | (value & (2**48 - 1))`` (embedlookup/_namespace.py); values must lie in [-2**47, 2**47).
FEATURE_SHIFT = 48
MAX_FEATURES = 1 << 15  # feature ids in [0, 2**15): namespaced keys stay non-negative
_COUNTERS = ("hits", "misses", "admitted", "rejected", "evicted", "hot_hits")


def _int(name, v, *, low, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an int >= {low}{' or None' if allow_none else ''}, got {v!r}")
    return int(v)


def _float(name, v, *, low, high, low_open=True, high_open=False):
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    ok = math.isfinite(x) and (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {v!r}")
    return x


class FrequencyTable(EmbeddingTable):
    """An embedding table that admits, scores, evicts and relays out rows by access frequency.

    Parameters (all keyword-only after ``dim``):

    - ``half_life`` (steps, > 0): a row's score is a decayed access count that
      halves every ``half_life`` clock steps. The clock advances once per
      training lookup call.
    - ``budget_rows`` / ``budget_bytes``: most rows kept (bytes are turned into
      rows with :meth:`bytes_per_row`). ``None`` for both: unbounded.
    - ``policy``: ``"lfu"`` (lowest decayed score), ``"lru"`` (least recent),
      ``"ttl"`` (unseen for more than ``ttl`` steps; checked every
      ``ttl_interval`` steps, default ``max(1, ttl // 4)``; LRU if still over
      budget) or ``"none"``. Default: ``"lfu"`` with a budget, else ``"none"``.
    - ``evict_fraction`` in [0, 1): on passing the budget, evict down to
      ``budget * (1 - evict_fraction)``, so one selection pass is amortised over
      many admissions.
    - ``admit_count`` (>= 1): sightings (count-min sketch of ``sketch_depth`` x
      ``sketch_width`` counters) before a key gets a row; ``admit_probability``
      in (0, 1]: then a deterministic per-(key, step) coin must also say yes.
    - ``default_row``: what keys without a row read: ``"zeros"`` (their
      gradients are dropped) or ``"cold"`` (one shared learned row, starting at
      zeros, to which their summed gradients are applied).
    - ``hot_fraction``: the hot region is row ids ``[0, hot_fraction * rows)``;
      :meth:`stats` reports the share of lookups it serves.
    - ``on_evict``: ``None`` (evicted rows wait in a buffer for
      :meth:`take_evicted`), ``"drop"`` (discarded, still counted), or a
      callable receiving a dict ``keys, rows, optimizer_state, scores,
      last_step`` (and ``feature`` when namespaced) after each call that evicted.
    - ``features``: ``None`` (raw int64 keys), or a list of feature names /
      ``True`` (names registered on first use): every call then names its
      ``feature`` and values must lie in [-2**47, 2**47).
    - ``max_batch_keys``: if given, a budget below it is rejected here rather
      than at the first oversized batch.
    - ``tier``: an ``embedlookup.storage.FileTier``: evicted rows (with their
      optimizer state and version) are written to it instead of ``on_evict``,
      and a training lookup of an evicted key brings its trained row back
      (no admission test). Serving lookups (``find``) read tier rows in
      place, without promoting them or changing any score.
    - ``cold_row_type`` (``None`` or ``"int8"``): precision that follows
      frequency. ``budget_bytes`` is then one budget for hot fp32 rows
      (:meth:`bytes_per_row` each) and cold int8 rows
      (:meth:`cold_bytes_per_row` each). Hot rows get ``hot_share`` of it:
      past ``floor(hot_share * budget_bytes / bytes_per_row)`` hot rows, the
      lowest-priority ones (``policy``) are demoted to int8 (row-wise scale
      and bias, round to nearest; their optimizer state as one int8 row;
      their score kept), and a training lookup of a cold key promotes it back
      to fp32 (no admission test). When hot and cold rows together pass the
      budget, the lowest-priority cold rows leave the table (as evictions:
      ``on_evict``). Serving lookups read cold rows in place. Needs
      ``optimizer=`` and ``policy`` ``"lfu"`` or ``"lru"``;
      docs/frequency.md, "Precision that follows frequency".
    """

    def __init__(self, dim: int, *, initializer: _init.Initializer | None = None,
                 optimizer: Optimizer | None = None, num_threads: int | None = None,
                 half_life: float = 1000.0, budget_rows: int | None = None, budget_bytes: int | None = None,
                 policy: str | None = None, evict_fraction: float = 0.05, ttl: int | None = None,
                 ttl_interval: int | None = None, admit_count: int = 1, admit_probability: float = 1.0,
                 admit_seed: int = 0, sketch_width: int = 1 << 20, sketch_depth: int = 4,
                 default_row: str = "zeros", hot_fraction: float = 0.1,
                 on_evict: Callable | str | None = None, features=None, max_batch_keys: int | None = None,
                 tier=None, row_type: str = "fp32", rounding_seed: int = 0, cold_row_type: str | None = None,
                 hot_share: float = 0.25):
        # The base class checks dim, initializer, optimizer, num_threads and
        # row_type (its small native table is replaced below).
        super().__init__(dim, initializer=initializer, optimizer=optimizer, num_threads=num_threads,
                         row_type=row_type, rounding_seed=rounding_seed)
        half_life = _float("half_life", half_life, low=0.0, high=math.inf, high_open=True)
        if budget_rows is not None and budget_bytes is not None:
            raise ValueError("give budget_rows or budget_bytes, not both")
        cold = self._cold_args(dim, optimizer, budget_bytes, budget_rows, policy, tier, row_type, cold_row_type,
                               hot_share)
        if budget_bytes is not None:
            b = _int("budget_bytes", budget_bytes, low=1)
            # with cold rows: the hot rows' share (a batch's rows must fit it)
            budget_rows = int((cold[1] if cold else 1.0) * b) // self.bytes_per_row(self._dim, optimizer, row_type)
            if budget_rows < 1:
                raise ValueError(f"budget_bytes={b} holds no row ({self.bytes_per_row(self._dim, optimizer, row_type)} "
                                 f"bytes each)")
        budget_rows = _int("budget_rows", budget_rows, low=1, allow_none=True)
        if policy is None:
            policy = "lfu" if budget_rows else "none"
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
        if budget_rows and policy == "none":
            raise ValueError("policy='none' cannot keep a budget; use 'lfu', 'lru' or 'ttl'")
        if not budget_rows and policy in ("lfu", "lru"):
            raise ValueError(f"policy={policy!r} needs budget_rows or budget_bytes")
        if policy == "ttl":
            ttl = _int("ttl", ttl, low=1)
        elif ttl is not None:
            raise ValueError(f"ttl is only used with policy='ttl', got policy={policy!r}")
        ttl_interval = _int("ttl_interval", ttl_interval, low=1, allow_none=True)
        evict_fraction = _float("evict_fraction", evict_fraction, low=0.0, high=1.0, low_open=False, high_open=True)
        admit_count = _int("admit_count", admit_count, low=1)
        admit_probability = _float("admit_probability", admit_probability, low=0.0, high=1.0)
        admit_seed = _int("admit_seed", admit_seed, low=0)
        sketch_width = _int("sketch_width", sketch_width, low=1)
        if sketch_width & (sketch_width - 1):
            raise ValueError(f"sketch_width must be a power of two, got {sketch_width}")
        sketch_depth = _int("sketch_depth", sketch_depth, low=1)
        if sketch_depth > 16:
            raise ValueError(f"sketch_depth must be <= 16, got {sketch_depth}")
        if default_row not in DEFAULT_ROWS:
            raise ValueError(f"default_row must be one of {sorted(DEFAULT_ROWS)}, got {default_row!r}")
        if default_row == "cold" and row_type != "fp32":
            raise ValueError(f"default_row='cold' needs row_type 'fp32' (the cold row is a learned fp32 row), "
                             f"got row_type={row_type!r}")
        hot_fraction = _float("hot_fraction", hot_fraction, low=0.0, high=1.0, low_open=False)
        max_batch_keys = _int("max_batch_keys", max_batch_keys, low=1, allow_none=True)
        if budget_rows and max_batch_keys and budget_rows < max_batch_keys:
            raise ValueError(f"budget_rows={budget_rows} is below one batch's distinct keys "
                             f"(max_batch_keys={max_batch_keys}): a batch's rows could not all be kept")
        self.budget_rows, self.policy, self.default_row = budget_rows, policy, default_row
        self.half_life = half_life
        self.on_evict = on_evict  # checked by the property
        self._namespaced = features is not None and features is not False
        self._auto_features = features is True
        self._feature_ids: dict = {}
        self._feature_stats: dict = {}
        if self._namespaced and not self._auto_features:
            for name in features:
                self._register(name)
        fo = _core.FrequencyOptions()
        fo.half_life = half_life
        fo.budget_rows = budget_rows or 0
        fo.policy = POLICIES[policy]
        fo.evict_fraction = evict_fraction
        fo.ttl = ttl or 0
        fo.ttl_interval = ttl_interval or 0
        fo.admit_count = admit_count
        fo.admit_probability = admit_probability
        fo.admit_seed = admit_seed
        fo.sketch_width = sketch_width
        fo.sketch_depth = sketch_depth
        fo.default_row = DEFAULT_ROWS[default_row]
        fo.hot_fraction = hot_fraction
        self._t = _core.FrequencyTable(_table_options(self._dim, self.initializer, 0, num_threads, row_type,
                                                      rounding_seed), fo)
        self.on_evict = on_evict  # again, now that the native table exists (see the property)
        if tier is not None:
            if on_evict is not None:
                raise ValueError("on_evict and tier are exclusive: with a tier, evicted rows are written to it")
            # Evictions write rows back to the tier; lookups
            # of evicted keys promote them (the budget, not memory_rows, rules).
            self._attach_tier(tier, None, True)
        self.cold_row_type = cold_row_type
        self.hot_share = cold[1] if cold else None
        if cold:
            from .storage import _optim_kind, _state_floats

            self.budget_bytes = int(budget_bytes)
            self._t.enable_cold_rows(_quantize.row_type_id(cold_row_type), self.budget_bytes,
                                     self.bytes_per_row(self._dim, optimizer), cold[0], cold[1],
                                     _state_floats(_optim_kind(optimizer), self._dim))

    @staticmethod
    def _load_options(info: dict, options: dict) -> dict:
        """``FrequencyTable.load(path, deltas, optimizer=..., **options)``: a
        checkpoint holds rows and optimizer state (hot and cold rows alike,
        cold ones as the values they decode to), not the frequency options,
        scores, clock or sketch: ``options`` are this class's constructor
        options (``budget_bytes``, ``cold_row_type``, ``policy``, ...), and
        the rows' scores start afresh (all equal). Loaded rows all land in
        memory; the next training call that admits or promotes a row holds
        the budget again."""
        if info["capacity"]:
            raise ValueError(f"path: the checkpoint is of a table with capacity {info['capacity']}; "
                             "a FrequencyTable has a budget instead (load it as an EmbeddingTable)")
        return options

    def _cold_args(self, dim, optimizer, budget_bytes, budget_rows, policy, tier, row_type, cold_row_type,
                   hot_share):
        """Checks the cold-row options; returns (cold bytes per row, hot_share) or None."""
        if cold_row_type is None:
            return None
        if cold_row_type != "int8":
            raise ValueError(f"cold_row_type must be None or 'int8', got {cold_row_type!r}")
        if row_type != "fp32":
            raise ValueError(f"cold_row_type needs row_type='fp32' (hot rows at full precision), got {row_type!r}")
        if budget_bytes is None or budget_rows is not None:
            raise ValueError("cold_row_type needs budget_bytes (one budget for hot and cold rows), not budget_rows")
        if optimizer is None:
            raise ValueError("cold_row_type needs optimizer=... (cold rows keep its state, sized by it)")
        if policy not in (None, "lfu", "lru"):
            raise ValueError(f"cold_row_type needs policy 'lfu' or 'lru' (who is demoted first), got {policy!r}")
        if tier is not None:
            raise ValueError("cold_row_type and tier are exclusive (cold rows are the table's own lower tier)")
        frac = _float("hot_share", hot_share, low=0.0, high=1.0)
        return self.cold_bytes_per_row(dim, optimizer, cold_row_type), frac

    @staticmethod
    def cold_bytes_per_row(dim: int, optimizer: Optimizer | None = None, cold_row_type: str = "int8") -> int:
        """Bytes one cold row costs: the row as stored (``quantize.row_bytes``),
        its optimizer state as one int8 row (when the optimizer has state),
        its version (8) and score (8), and its index share (~16, as
        :meth:`bytes_per_row`)."""
        from .storage import _optim_kind, _state_floats

        sf = _state_floats(_optim_kind(optimizer), int(dim))
        state = _quantize.row_bytes("int8", sf) if sf else 0
        return _quantize.row_bytes(cold_row_type, int(dim)) + state + 8 + 8 + 16

    @staticmethod
    def bytes_per_row(dim: int, optimizer: Optimizer | None = None, row_type: str = "fp32") -> int:
        """Bytes one row costs: the row as stored (fp32 padded to 8 floats, other
        types ``quantize.row_bytes``), its optimizer state, its score metadata (8)
        and key (8), and its index share (~16 at the index's 0.8 load)."""
        stride = (int(dim) + 7) // 8 * 8
        from . import optim
        from . import quantize

        if isinstance(optimizer, optim.Adagrad):
            state = 1 if optimizer.rowwise else int(dim)
        elif isinstance(optimizer, optim.Adam):
            state = 2 * int(dim)
        else:
            state = 0
        row = 4 * stride if row_type == "fp32" else quantize.row_bytes(row_type, int(dim))
        return row + 4 * state + 8 + 8 + 16

    # --------------------------------------------------------------- features
    def _register(self, name) -> int:
        if name in self._feature_ids:
            return self._feature_ids[name]
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            fid = int(name)
            if not 0 <= fid < MAX_FEATURES:
                raise ValueError(f"feature id must be in [0, {MAX_FEATURES}), got {fid}")
            if fid in self._feature_ids.values():
                raise ValueError(f"feature id {fid} is already used by another name")
        elif isinstance(name, str):
            used = set(self._feature_ids.values())
            fid = next(i for i in range(MAX_FEATURES + 1) if i not in used or i == MAX_FEATURES)
            if fid >= MAX_FEATURES:
                raise ValueError(f"at most {MAX_FEATURES} features per table")
        else:
            raise TypeError(f"feature must be a name (str) or an id (int), got {type(name).__name__}")
        self._feature_ids[name] = fid
        self._feature_stats[name] = dict.fromkeys(_COUNTERS, 0)
        return fid

    def feature_id(self, feature) -> int:
        """The id of a feature name (registering it when the table was built with ``features=True``)."""
        if not self._namespaced:
            raise ValueError("this table was built without features=...; calls take raw keys")
        if feature not in self._feature_ids:
            if not self._auto_features:
                raise ValueError(f"feature {feature!r} is not one of {list(self._feature_ids)}")
            return self._register(feature)
        return self._feature_ids[feature]

    def _prefetch_keys(self, keys, feature):
        return self.namespaced_keys(keys, feature, "keys")

    def namespaced_keys(self, values, feature, name: str = "values") -> np.ndarray:
        """The table keys of ``values`` of ``feature``: ``id << 48 | (value &
        (2**48 - 1))``, the rule of embedlookup/_namespace.py. Values must lie
        in [-2**47, 2**47).
        ``name``: the caller's argument name, for error messages."""
        v = _checks.keys_1d(values, name)
        if feature is None:
            if self._namespaced:
                raise ValueError("feature: this table is namespaced; name the feature of these keys")
            return v
        fid = self.feature_id(feature)
        return feature_keys(v, fid, 64 - FEATURE_SHIFT, f"{name} of feature {feature!r}")

    def _account(self, feature, cs) -> None:
        if feature is not None:
            st = self._feature_stats[feature]
            for name, x in zip(_COUNTERS, cs):
                st[name] += x
        if cs[4]:
            self._drain()

    @property
    def on_evict(self):
        """What happens to evicted rows: ``None`` (buffered for
        :meth:`take_evicted`), ``"drop"`` (not collected at all: only counted,
        and tombstoned for deltas) or a callable (called with each batch)."""
        return self._on_evict

    @on_evict.setter
    def on_evict(self, value) -> None:
        drop = isinstance(value, str) and value == "drop"
        if not (value is None or drop or callable(value)):
            raise ValueError(f"on_evict must be None, 'drop' or a callable, got {value!r}")
        self._on_evict = value
        if isinstance(getattr(self, "_t", None), _core.FrequencyTable):  # set again once it exists
            self._t.set_discard_evicted(drop)

    def _drain(self) -> None:
        if self.on_evict is None:
            return
        ev = self._t.take_evicted()
        if self._namespaced and ev["keys"].size:
            fids = ev["keys"] >> FEATURE_SHIFT
            ev["feature"] = fids
            names = {v: k for k, v in self._feature_ids.items()}
            for fid, c in zip(*np.unique(fids, return_counts=True)):
                if int(fid) in names:
                    self._feature_stats[names[int(fid)]]["evicted_rows"] = \
                        self._feature_stats[names[int(fid)]].get("evicted_rows", 0) + int(c)
        if callable(self.on_evict) and ev["keys"].size:
            self.on_evict(ev)

    def take_evicted(self) -> dict:
        """Evicted rows waiting in the buffer (``on_evict=None``), oldest first:
        ``keys, rows, optimizer_state, scores, last_step``; the buffer is emptied."""
        return self._t.take_evicted()

    # ---------------------------------------------------------------- lookups
    def lookup(self, keys, *, train: bool = True, weights=None, feature=None, out=None,
               insert: bool | None = None, found=None) -> np.ndarray:
        """Rows of ``keys`` (n, dim). ``train=True`` advances the clock, scores
        the keys (each occurrence adds ``weights[i]``, default 1), admits and
        evicts. Keys without a row read the default row. ``insert`` is
        accepted as EmbeddingTable's name for ``train``. ``found``: an
        optional bool array (n,) set to whether each key holds a row after
        the call (admitted now or before, and not evicted)."""
        train = train if insert is None else insert
        k = self.namespaced_keys(keys, feature, "keys")
        w = None if weights is None else self._score_weights(weights, k.shape[0], "weights")
        o = _checks.out_array(out, "out", (k.shape[0], self._dim), keys=k, weights=w)
        if found is not None:
            if not isinstance(found, np.ndarray):  # a converted copy would not reach the caller
                raise TypeError(f"found must be a numpy bool array of shape ({k.shape[0]},), got {type(found).__name__}")
            found = _checks.out_array(found, "found", (k.shape[0],), dtype=np.bool_, keys=k, weights=w, rows=o)
        self._account(feature, self._t.lookup(k, o, bool(train), found, w))
        return o

    def find(self, keys, *, feature=None, out=None) -> tuple[np.ndarray, np.ndarray]:
        """Read-only serving lookup: (rows, found); changes no score, admits nothing."""
        k = self.namespaced_keys(keys, feature, "keys")
        o = _checks.out_array(out, "out", (k.shape[0], self._dim), keys=k)
        found = np.empty(k.shape[0], dtype=np.bool_)
        self._account(feature, self._t.lookup(k, o, False, found, None))
        return o, found

    def resolve(self, keys, *, insert: bool = True):
        """Not offered here: a FrequencyTable scores every access and may
        admit or evict at each training lookup, so its lookups resolve their
        own keys (``pooled_lookup(..., return_ids=True)`` still hands the ids
        to the backward). Resolution ahead is :meth:`EmbeddingTable.resolve`."""
        raise NotImplementedError("FrequencyTable.resolve: a FrequencyTable's lookups score and admit keys, so they "
                                  "resolve their own; resolution ahead is EmbeddingTable.resolve")

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False, *, train: bool = True, score_weights=None,
                      feature=None, out=None, insert: bool | None = None, return_ids: bool = False):
        """``torch.nn.EmbeddingBag`` pooling (see EmbeddingTable.pooled_lookup),
        with the training side effects of :meth:`lookup`. ``score_weights``
        (one per value, >= 0) weight the scores, e.g. positives more (Kraken).
        ``insert`` is accepted as EmbeddingTable's name for ``train``.
        ``return_ids=True``: ``(out, forward_ids)`` for :meth:`apply_pooled_gradients`."""
        train = train if insert is None else insert
        m = _checks.mode_id(mode)
        v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
        v = self.namespaced_keys(v, feature)  # values' own memory when not namespaced
        pw = _checks.bag_weights(per_sample_weights, mode, v.shape[0], getattr(values, "shape", None))
        sw = None if score_weights is None else self._score_weights(score_weights, v.shape[0])
        o = _checks.out_array(out, "out", (n_bags, self._dim), values=v, offsets=off, per_sample_weights=pw,
                              score_weights=sw)
        if return_ids:
            _forward_ids_mode(mode)
            if sw is not None:
                raise ValueError("return_ids: score_weights are not supported with it")
            ids = np.empty(v.shape[0], dtype=np.uint32)
            cs, epoch = self._t.pooled_lookup_ids(v, off, n_bags, m, pw, o, bool(train), ids, None)
            self._account(feature, cs)
            return o, ForwardIds(self, v, ids, epoch)
        self._account(feature, self._t.pooled_lookup(v, off, n_bags, m, pw, o, bool(train), sw))
        return o

    @staticmethod
    def _score_weights(w, n, name: str = "score_weights") -> np.ndarray:
        a = _checks.floats(w, name, (n,))
        if a.size and not (np.all(np.isfinite(a)) and a.min() >= 0):
            raise ValueError(f"{name} must be finite and >= 0")
        return a

    # -------------------------------------------------------------- mutations
    def apply_gradients(self, keys, grads, optimizer: Optimizer | None = None, *, feature=None) -> None:
        """Fused optimizer step on the rows of ``keys``. Keys without a row
        (not admitted, or evicted since their lookup) have their gradients
        dropped (``default_row='zeros'``) or applied, summed, to the cold row."""
        opt = optimizer if optimizer is not None else self.optimizer
        if opt is None:
            raise ValueError("optimizer: none given and the table has no default optimizer")
        if not isinstance(opt, Optimizer):
            raise TypeError(f"optimizer must be an embedlookup.optim optimizer, got {type(opt).__name__}")
        k = self.namespaced_keys(keys, feature, "keys")
        g = _checks.floats(grads, "grads", (k.shape[0], self._dim))
        self._t.apply_gradients(k, g, opt._spec())

    def apply_pooled_gradients(self, values, offsets, grad_output, optimizer: Optimizer | None = None,
                               mode: str = "sum", per_sample_weights=None, include_last_offset: bool = False, *,
                               feature=None, forward_ids: ForwardIds | None = None) -> None:
        """The fused backward of :meth:`pooled_lookup` (see
        EmbeddingTable.apply_pooled_gradients); occurrences of keys without a
        row go to the default row as in :meth:`apply_gradients`."""
        v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
        self._apply_pooled(self.namespaced_keys(v, feature), off, n_bags, grad_output, optimizer, mode,
                           per_sample_weights, getattr(values, "shape", None), forward_ids)

    def assign(self, keys, rows, *, feature=None) -> None:
        """Sets rows (always admits; the budget is enforced afterwards)."""
        k = self.namespaced_keys(keys, feature, "keys")
        r = _checks.finite(_checks.floats(rows, "rows", (k.shape[0], self._dim)), "rows")
        self._t.assign(k, r)
        self._drain()

    def erase(self, keys, *, feature=None) -> int:
        return self._t.erase(self.namespaced_keys(keys, feature, "keys"))

    # --------------------------------------------------------------- layout
    def relayout_step(self, max_moves: int = 65536) -> int:
        """Moves at most ``max_moves`` rows towards score order (hottest at row
        id 0) in one short exclusive pause; starts a new plan when the last one
        finished. Returns the planned rows left (0: packed)."""
        return self._t.relayout_step(_int("max_moves", max_moves, low=1))

    def relayout(self, chunk: int = 65536) -> None:
        """Runs :meth:`relayout_step` until the table is packed (lookups from
        other threads run between chunks)."""
        self._t.relayout(_int("chunk", chunk, low=1))

    def inspect(self, keys, *, feature=None):
        """(score, last_step, row_id) per key: the stored score (as of
        last_step; -1 when absent) and the row id (2**32 - 1 when absent)."""
        return self._t.inspect(self.namespaced_keys(keys, feature, "keys"))

    def default_row_values(self) -> np.ndarray:
        """The row that keys without a row read (zeros, or the learned cold row)."""
        return self._t.default_row()

    # ------------------------------------------------ frequency checkpoint
    def frequency_state(self, keys: np.ndarray) -> dict:
        """What this table keeps beyond rows and optimizer state (which
        ``save`` / ``export`` hold), as NumPy arrays: ``scores`` and
        ``last_step`` of ``keys`` (rows the table holds), the ``clock``, the
        admission ``sketch`` (empty when ``admit_count == 1``), the default
        ``cold_row`` and its ``cold_state``. With the rows, it lets
        :meth:`restore_frequency_state` bring back a table that admits,
        scores and evicts exactly as this one would."""
        if self.cold_row_type is not None:
            raise NotImplementedError("frequency_state: a FrequencyTable with cold_row_type keeps int8 rows "
                                      "whose precision a checkpoint does not carry (they load as fp32)")
        score, last, ids = self.inspect(keys)
        missing = np.flatnonzero(ids == np.iinfo(np.uint32).max)
        if missing.size:
            raise KeyError(f"keys: {missing.size} of the keys have no row in this table (the first, "
                           f"{int(np.asarray(keys)[missing[0]])}, at position {int(missing[0])})")
        s = self._t.save_state()
        return {"keys": np.ascontiguousarray(keys, dtype=np.int64), "scores": np.ascontiguousarray(score),
                "last_step": np.ascontiguousarray(last, dtype=np.uint32), "clock": np.uint32(s["clock"]),
                "sketch": s["sketch"], "cold_row": s["cold_row"], "cold_state": s["cold_state"]}

    def restore_frequency_state(self, state: dict) -> None:
        """Loads a :meth:`frequency_state` into this table, which must already
        hold the rows of ``state["keys"]`` and be configured as the table it
        came from (sketch size, dim). Raises ValueError / KeyError naming what
        does not fit; the table is then unchanged."""
        keys = _checks.keys_1d(state["keys"], "state['keys']")
        scores = np.ascontiguousarray(state["scores"], dtype=np.float32)
        last = np.asarray(state["last_step"])
        if scores.shape != keys.shape or last.shape != keys.shape:
            raise ValueError("state: scores and last_step need one entry per key")
        if last.size and (last.min() < 0 or last.max() >= 2**32):
            raise ValueError("state: last_step values must lie in [0, 2**32)")
        sketch = np.ascontiguousarray(state["sketch"]).view(np.uint32)
        self._t.restore_state(int(state["clock"]), sketch, np.ascontiguousarray(state["cold_row"], np.float32),
                              np.ascontiguousarray(state["cold_state"], np.float32), keys, scores,
                              np.ascontiguousarray(last, dtype=np.uint32))

    # ---------------------------------------------------------------- stats
    def stats(self) -> dict:
        """Counters since construction (hits and misses count key occurrences;
        admitted, rejected and evicted count distinct keys), the hot-region hit
        ratio, and bytes per part. ``features`` holds per-feature counters."""
        s = dict(self._t.stats())
        lookups = s["hits"] + s["misses"]
        s["hit_ratio"] = s["hits"] / lookups if lookups else 0.0
        s["hot_hit_ratio"] = s["hot_hits"] / lookups if lookups else 0.0
        parts = ["index_bytes", "row_bytes", "optimizer_state_bytes", "metadata_bytes", "sketch_bytes",
                 "evicted_buffer_bytes"]
        if "cold_rows" in s:  # cold rows: their own row, state, metadata and index bytes
            parts += ["cold_row_bytes", "cold_state_bytes", "cold_metadata_bytes", "cold_index_bytes"]
            s["cold_bytes"] = sum(s[k] for k in parts[6:])
        s["total_bytes"] = sum(s[k] for k in parts)
        n = max(s["rows"], 1)
        s["row_bytes_per_row"] = 4 * self._t.stride
        s["overhead_bytes_per_row"] = (s["index_bytes"] + s["metadata_bytes"]) / n
        if self._namespaced:
            s["features"] = {k: dict(v) for k, v in self._feature_stats.items()}
        return s

    def memory_usage(self) -> dict:
        s = self.stats()
        keys = ("index_bytes", "row_bytes", "optimizer_state_bytes", "metadata_bytes", "sketch_bytes",
                "evicted_buffer_bytes", "total_bytes", "rows", "row_bytes_per_row", "overhead_bytes_per_row")
        m = {k: s[k] for k in keys}
        if "cold_rows" in s:
            for k in ("cold_rows", "cold_bytes", "cold_row_bytes", "cold_state_bytes", "cold_metadata_bytes",
                      "cold_index_bytes"):
                m[k] = s[k]
            m["cold_row_bytes_per_row"] = _quantize.row_bytes(self.cold_row_type, self._dim)
            # What the budget counts: hot rows x bytes_per_row + cold rows x cold_bytes_per_row.
            m["budget_bytes"] = self.budget_bytes
            m["accounted_bytes"] = (s["rows"] * self.bytes_per_row(self._dim, self.optimizer)
                                    + s["cold_rows"] * self.cold_bytes_per_row(self._dim, self.optimizer,
                                                                               self.cold_row_type))
        return m

    def cold_keys(self) -> np.ndarray:
        """Keys held as cold (compressed) rows, sorted (empty without ``cold_row_type``)."""
        return self._t.cold_keys()

    def __repr__(self) -> str:
        cold = f", cold_row_type={self.cold_row_type!r}, budget_bytes={self.budget_bytes}" if self.cold_row_type else ""
        return (f"FrequencyTable(dim={self._dim}, rows={len(self)}, budget_rows={self.budget_rows}, "
                f"policy={self.policy!r}{cold})")
