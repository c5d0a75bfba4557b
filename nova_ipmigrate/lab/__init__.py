"""The on-one-machine lab: runs guests on memfs for the demo, tests and benchmarks."""
