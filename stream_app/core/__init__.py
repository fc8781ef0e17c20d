"""Pure core: windows, baselines, statistics, verdicts, flow and DORA (no I/O, no clock)."""
