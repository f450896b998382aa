"""Number formatting shared by every rendering of the report."""


def human_bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def is_table(value: object) -> bool:
    """Pass details that are a list of records are shown as tables of their own."""
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def table_columns(rows: list[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def inline_details(details: dict) -> str:
    """The scalar and list-of-scalar details of a pass, as ``key=value`` pairs."""
    return ", ".join(f"{k}={cell(v)}" for k, v in details.items() if not is_table(v) and v not in ([], {}, None))
