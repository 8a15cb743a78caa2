"""Interfaces to the machine: dask clusters (LocalCluster, schedulers, dask-jobqueue), the
glibc malloc tuning of worker processes, memory and stage diagnostics."""
