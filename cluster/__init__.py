"""Ray wiring: cluster connection, the decode/inference pipeline, launch files. Nothing else."""
