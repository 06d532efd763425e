"""The content batch pipeline's domain: free of Prefect, usable and testable alone."""
