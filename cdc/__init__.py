"""The ERP side and the ground every other package stands on: the contracts (facts, changes), the mapping,
the normalizer, one folder per ERP database (sources/) and the outbox. Imports nothing above it."""
