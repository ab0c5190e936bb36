"""Faithful loopback emulators of the shop admin APIs, for tests, benchmarks and the demo.

They are real HTTP servers that keep a catalogue, check request shapes the way the platform does,
enforce its limits with its own throttling answers, and inject faults on demand."""
