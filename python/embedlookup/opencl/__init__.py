"""OpenCL backend: an embedding table held in device memory, probed and pooled on the device.

Usage::

    import embedlookup as el
    from embedlookup.opencl import OpenCLTable
    dev_table = OpenCLTable(table, platform="portable")          # PoCL, CPU OpenCL
    out = dev_table.pooled_lookup(values, offsets, mode="mean")  # == table.pooled_lookup(..., insert=False)

Two kernel variants, both shipped as ``.cl`` files in this package and both
giving the CPU engine's results:

``ndrange`` (``ndrange.cl``), for CPUs and GPUs
    One work item per key resolves it through the hash index, then one work
    item per (column, bag) accumulates the bag's rows in key order. Many
    independent work items are what GPUs and CPU OpenCL runtimes (PoCL)
    need to fill their lanes; consecutive work items read consecutive
    columns, so row reads coalesce.

``single_work_item`` (``single_work_item.cl``), for FPGA OpenCL compilers
    One work item (a "task") runs plain loops that the FPGA compiler turns
    into one deep pipeline: bounded hash probe, a burst read of each row
    into a fixed-size private buffer, and a column loop whose only
    loop-carried dependency (the accumulator of one column) recurs every
    ``dim / 8`` iterations, so it can start a new iteration every cycle
    (II=1). No recursion, no dynamic sizes: the buffers are ``EL_MAX_DIM``
    floats, fixed when the program is built. On CPUs and GPUs it is slow (one
    thread does everything); it runs here so CI checks its results on PoCL.

``variant="auto"`` picks single_work_item on accelerator devices (FPGA
boards report CL_DEVICE_TYPE_ACCELERATOR) and ndrange elsewhere. For an FPGA
offline compiler, build ``single_work_item.cl`` with ``-I`` this folder and
``-DEL_MAX_DIM=<dim rounded up to 8>``.
"""

from .table import VARIANTS, DeviceMemoryError, OpenCLTable, OpenCLUnavailableError, available_devices

__all__ = ["VARIANTS", "DeviceMemoryError", "OpenCLTable", "OpenCLUnavailableError", "available_devices"]
