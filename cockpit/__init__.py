"""nanochat cockpit: run, watch and resume training experiments."""
