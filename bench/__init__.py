"""calsync benchmarks: each measures our code beside its reference in the same run."""
