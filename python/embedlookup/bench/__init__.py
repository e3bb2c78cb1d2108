"""The microbenchmark suite behind ``embedlookup bench``.

Reusable pieces: :mod:`.workloads` (named, seeded key workloads),
:mod:`.ops` (operations and the registry of subjects that implement them:
embedlookup, its backends, and the peers torch, FBGEMM and NumPy),
:mod:`.runner` (checked, warmed-up, interleaved timing), :mod:`.machine`
(machine description and measured limits) and :mod:`.report` (table, JSON,
Markdown, PNG). From Python::

    from embedlookup import bench
    report = bench.run([(bench.parse_workload("small"), ["pooled_sum"])])
    print(bench.format_table(report))
"""

from .ops import OPS, SUBJECTS, Case, Skip, implements, operation, subject
from . import ops_cuda  # noqa: F401,E402 - registers the cuda subject
from . import ops_storage  # noqa: F401,E402 - registers tier_read, tier_write, checkpoint, evict
from . import ops_torchrec  # noqa: F401,E402 - registers the torchrec subject (skipped without torchrec)
from . import ops_ps  # noqa: F401,E402 - registers ps_step and the ps-local, ps-ray subjects
from . import ops_compressed  # noqa: F401,E402 - registers pooled_sum_fp16 / _bf16 / _int8 / _int4
from .report import format_table, to_markdown, write_json, write_markdown, write_plot
from .runner import SCHEMA, Config, compare_outputs, run
from .workloads import SUITES, WORKLOADS, Workload, WorkloadData, WorkloadError, parse_workload

__all__ = [
    "OPS",
    "SCHEMA",
    "SUBJECTS",
    "SUITES",
    "WORKLOADS",
    "Case",
    "Config",
    "Skip",
    "Workload",
    "WorkloadData",
    "WorkloadError",
    "compare_outputs",
    "format_table",
    "implements",
    "operation",
    "parse_workload",
    "run",
    "subject",
    "to_markdown",
    "write_json",
    "write_markdown",
    "write_plot",
]
