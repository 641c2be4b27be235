"""Performance benchmarks: programs that print measurements, not tests."""
