"""Benchmarks of nova-ipmigrate (BENCHMARKS.md), run by ``ipmigrate-bench <name>``.

Each module measures one benchmark and its reference in the same run and
reports ratios, with the raw figures, as JSON and as a short human summary.
"""
