"""Persistence: typed models, the engine, migrations and the queries the pipeline runs."""
