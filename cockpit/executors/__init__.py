"""Executors: how a launch's legs get run. `slurm` submits them as batch jobs to a Slurm cluster."""
