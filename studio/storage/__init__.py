"""Where finished pieces' files go: a local folder or an S3-compatible bucket (R2)."""
