"""Executors: how a launch's legs get run. `local` runs them on this machine through a detached
supervisor; `slurm` submits them as a chain of batch jobs to a Slurm cluster."""
