"""The `modelium` command line (typer)."""
