"""Reconciler: compare the ERP (through the same mapping, as SQL) with what each shop shows, report drift,
optionally heal it through the outbox."""
