"""Test beds on one machine: racks of network namespaces with shaped uplinks (`racks`) and a private
multi-node Slurm cluster (`cluster`), optionally with its nodes inside those racks.

Pure text/command generation lives in `slurmconf` and `fabric`; `daemons`, `cluster` and `racks` run
processes and are the only modules here that touch the system.
"""
