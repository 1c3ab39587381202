"""Fault injection: several `ipam serve --role ...` processes under load while things break.

Run: python -m tests.faults --runs 50 --seconds 40 --seed 1   (or `make faults`)
"""
