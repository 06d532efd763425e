"""What prefect.yaml does not hold: serving without a work pool, and automations."""
