"""Independent simulated worlds and an oracle-graded accuracy scorer for the release judge."""
