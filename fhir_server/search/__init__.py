"""FHIR search: SearchParameter registry, index-row extraction on write, SQL compilation of queries.

See README.md in this package for the design, the semantics chosen and the measured figures.
"""
