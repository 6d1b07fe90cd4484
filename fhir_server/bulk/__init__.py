"""Bulk data: $export jobs (Bulk Data Access 2.0)."""
