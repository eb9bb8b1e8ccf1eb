"""kernel-lab: what users touch (CLI, job specs, storage, reports). Nothing here imports torch."""
