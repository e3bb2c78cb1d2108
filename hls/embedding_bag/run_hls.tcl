# Vitis HLS flow for the embedding_bag kernel.
#
#   cd hls/embedding_bag
#   PYTHONPATH=../../python python3 make_golden.py golden.bin      # golden data from the CPU engine
#   vitis_hls -f run_hls.tcl -tclargs csim csynth cosim [export]
#
# Steps (any subset, in this order): csim (C simulation of the testbench),
# csynth (synthesis; report in embedding_bag_prj/sol1/syn/report), cosim
# (RTL co-simulation with the same testbench), export (a Vitis .xo kernel for
# v++ linking). No argument: csim only. Environment overrides:
#   EL_PART   FPGA part (default xcu280-fsvh2892-2L-e, an Alveo U280 with HBM)
#   EL_CLOCK  clock period in ns (default 3.33, 300 MHz)
#   EL_GOLDEN golden file (default golden.bin beside this script)
#   EL_TOP    top function: embedding_bag (fp32 rows, default) or embedding_bag_int8
#             (int8 rows); csim runs the testbench, which exercises both

set here [file dirname [file normalize [info script]]]
set steps $argv
if {[llength $steps] == 0} { set steps {csim} }
foreach s $steps {
  if {[lsearch -exact {csim csynth cosim export} $s] < 0} {
    puts "run_hls.tcl: unknown step '$s' (expected csim, csynth, cosim, export)"
    exit 1
  }
}
proc want {s} { global steps; return [expr {[lsearch -exact $steps $s] >= 0}] }
proc env_or {name default} { global env; if {[info exists env($name)]} { return $env($name) }; return $default }

set part   [env_or EL_PART xcu280-fsvh2892-2L-e]
set clock  [env_or EL_CLOCK 3.33]
set golden [file normalize [env_or EL_GOLDEN $here/golden.bin]]
set top    [env_or EL_TOP embedding_bag]
# The probe's hash is the CPU engine's own header: one source for every backend.
set cflags "-std=c++14 -I$here/../../native/include -I$here"

open_project -reset ${top}_prj
set_top $top
add_files $here/embedding_bag.cpp -cflags $cflags
add_files $here/embedding_bag_int8.cpp -cflags $cflags
add_files -tb $here/tb_embedding_bag.cpp -cflags $cflags
open_solution -reset sol1 -flow_target vitis
set_part $part
create_clock -period $clock -name default

if {[want csim]}   { csim_design -argv $golden }
if {[want csynth]} { csynth_design }
if {[want cosim]}  { cosim_design -argv $golden }
if {[want export]} { export_design -format xo -output $here/$top.xo }
exit
