"""Child process of test_crash.py: writes into a FileTier until killed.

Run r writes generations g = r * 100000 + 1, + 2, ...: each generation sets a
random half of the keys to row [key, g, g, ...] with version g, and every
third generation flushes and then prints "F <g>" (the acknowledgement).
The write schedule is a pure function of (run, generation) so the parent can
recompute which keys each generation wrote.
"""

import sys

import numpy as np

N_KEYS, DIM, CAPACITY = 2000, 64, 4000


def keys_of(gen: int) -> np.ndarray:
    if gen % 100000 == 1:
        return np.arange(N_KEYS)  # first generation of a run: every key
    return np.sort(np.random.default_rng(gen).choice(N_KEYS, N_KEYS // 2, replace=False))


def rows_of(keys: np.ndarray, gen: int) -> np.ndarray:
    r = np.full((keys.size, DIM), float(gen % (1 << 24)), np.float32)
    r[:, 0] = keys
    return r


def main():
    sys.path.insert(0, sys.argv[3])
    import embedlookup as el

    path, run = sys.argv[1], int(sys.argv[2])
    tier = el.storage.FileTier(path, CAPACITY, dim=DIM)
    print("R", flush=True)  # opened (and recovered)
    gen = run * 100000
    while True:
        gen += 1
        k = keys_of(gen)
        tier.set(k, rows_of(k, gen), versions=np.full(k.size, gen, np.uint64))
        if gen % 3 == 0 or gen % 100000 == 1:
            tier.flush()
            print(f"F {gen}", flush=True)


if __name__ == "__main__":
    main()
