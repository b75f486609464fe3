"""End-to-end tests against a real Label Studio (see docs/e2e.md)."""
