"""The report: one pydantic model (``schema``), rendered as JSON and Markdown here and as a table by the CLI."""
