"""Is a compiled graph rebuilt over the same shard actors as fast as the
first one? The W1 step of ``bench_ps_isolated.py``'s ``ray-graph`` subject
(1 M x 64 rows, batch 4096 x 32, 2 Ray shards of one thread) timed after
each of ``--builds`` builds in one process: between them the graph is torn
down and built again over the same live actor processes (as after a
failure). Medians of ``--steps`` steps.

    PYTHONPATH=python python bench/bench_ps_graph_rebuild.py --builds 4
"""

import argparse

from bench_ps_isolated import median_step, setup


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--builds", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=1_000_000)
    a = p.parse_args(argv)
    step, batches, server = setup("ray-graph", a.rows)
    b = server._b
    try:
        for _ in range(a.builds):
            for batch in batches:  # builds the graph (after the first round: again) and warms it
                step(*batch)
            print(f"build {b.graph_builds}: {1e3 * median_step(step, batches, a.steps):.2f} ms a step", flush=True)
            b._suspend_graph()
            b._resume_graph()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
