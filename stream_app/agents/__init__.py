"""Faust agents and tables: decode -> core -> emit, one module per domain."""
