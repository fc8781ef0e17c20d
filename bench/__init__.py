"""valueloop benchmarks: the pipeline measured against the raw-consumer floor (see README.md)."""
