"""Real infrastructure for tests: embedded PostgreSQL and a SeaweedFS S3 gateway on loopback."""
