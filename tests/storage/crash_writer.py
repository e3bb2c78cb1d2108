"""Child process of test_crash.py: writes until killed, acknowledging on stdout.

argv: path run pkg mode, mode "tier" (a FileTier written directly) or
"table" (an EmbeddingTable over a FileTier with a memory budget: assign,
demote, promoting lookups, erase).

Run r performs generations g = r * 100000 + 1, + 2, ... The operation of a
generation and the keys it touches are a pure function of g (op_of, keys_of),
so the parent recomputes them. A row written by generation g is
[key, g, g, ...] (whole or torn is visible). The child prints:

* ``R <recovered>`` once the tier is open (recovered: it was opened dirty);
* ``A <g>`` for each generation whose effect is durable by the contract of
  docs/storage.md, printed only AFTER the calls returned: in "tier" mode
  after ``flush()`` (it covers every generation since the previous flush);
  in "table" mode after ``demote(keys)`` (or ``erase``) then ``tier.flush()``.
"""

import sys

import numpy as np

N_KEYS, DIM, CAPACITY = 1000, 16, 2000
MEMORY_ROWS = 64


def keys_of(gen: int, mode: str = "tier") -> np.ndarray:
    i = gen % 100000
    if i == 1:
        return np.arange(N_KEYS)  # first generation of a run: every key
    n = N_KEYS // 20 if op_of(gen, mode) == "erase" else N_KEYS // 4
    return np.sort(np.random.default_rng(gen).choice(N_KEYS, n, replace=False))


def op_of(gen: int, mode: str = "tier") -> str:
    """tier: set / erase. table: set (assign + demote + flush: acked), erase (+ flush: acked),
    lookup (promotes known keys), assign (memory only: never acked)."""
    i = gen % 100000
    if i == 1:
        return "set"
    if mode == "tier":
        return "erase" if gen % 5 == 0 else "set"
    return ("erase", "set", "lookup", "assign")[gen % 4]


def rows_of(keys: np.ndarray, gen: int) -> np.ndarray:
    r = np.full((keys.size, DIM), float(gen % (1 << 24)), np.float32)
    r[:, 0] = keys
    return r


def run_tier(el, path, run):
    tier = el.storage.FileTier(path, CAPACITY, dim=DIM)
    print("R", int(tier.recovered), flush=True)
    gen, pending = run * 100000, []
    while True:
        gen += 1
        k = keys_of(gen)
        if op_of(gen) == "erase":
            tier.erase(k)
        else:
            tier.set(k, rows_of(k, gen), versions=np.full(k.size, gen, np.uint64))
        pending.append(gen)
        if gen % 3 == 0 or gen % 100000 == 1:
            tier.flush()
            for g in pending:
                print("A", g, flush=True)
            pending = []


def run_table(el, path, run):
    tier = el.storage.FileTier(path, CAPACITY)
    t = el.EmbeddingTable(DIM, initializer=el.init.zeros(), tier=tier, memory_rows=MEMORY_ROWS, promote=True)
    print("R", int(tier.recovered), flush=True)
    known = set(tier.keys(0).tolist())
    rng = np.random.default_rng(run)
    gen = run * 100000
    while True:
        gen += 1
        op, k = op_of(gen, "table"), keys_of(gen, "table")
        if op == "set":
            t.assign(k, rows_of(k, gen))
            known.update(k.tolist())
            t.demote(k)
            tier.flush()
            print("A", gen, flush=True)
        elif op == "erase":
            t.erase(k)
            known.difference_update(k.tolist())
            tier.flush()
            print("A", gen, flush=True)
        elif op == "lookup" and known:
            pool = np.array(sorted(known), np.int64)
            t.lookup(rng.choice(pool, min(pool.size, N_KEYS // 4), replace=False))  # promotes
        elif op == "assign":
            t.assign(k, rows_of(k, gen))  # memory only (written back under the budget): never acked
            known.update(k.tolist())


def main():
    sys.path.insert(0, sys.argv[3])
    import embedlookup as el

    path, run = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[4] if len(sys.argv) > 4 else "tier"
    (run_tier if mode == "tier" else run_table)(el, path, run)


if __name__ == "__main__":
    main()
