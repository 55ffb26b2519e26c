"""Pure one-time-password math: no I/O, no clocks, no global state."""
