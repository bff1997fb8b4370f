"""The plan's schema as data: parsed from the ```sql blocks of the migration plan.

``plan_schema.sql`` beside this file is those blocks, extracted verbatim (see
:func:`extract_sql_blocks`), so CI does not need the plan document itself; a test checks
the copy still matches the plan whenever the plan is available.
The parser understands exactly the plan's dialect (one column per line, one CREATE INDEX
per line) and fails loudly on anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAN_SQL = HERE / "plan_schema.sql"
REPO = HERE.parent.parent
#: Where the plan document may be: the repository's copy first, then the team's shared one.
PLAN_DOCS = (
    REPO / "docs" / "plan" / "database-migration-plan.md",
    REPO.parent / "shared" / "seed" / "database-migration-plan.md",
    Path("/work/shared/seed/database-migration-plan.md"),
)

TABLE_RE = re.compile(r"CREATE TABLE (\w+) \((.*?)\n\);", re.S)
INDEX_RE = re.compile(r"CREATE INDEX (\w+) ON (\w+)(?: USING (\w+))?\s*\((.*)\);")
TYPES = {
    "UUID": "uuid",
    "JSONB": "jsonb",
    "TEXT": "text",
    "INTEGER": "integer",
    "BOOLEAN": "boolean",
    "INET": "inet",
    "TIMESTAMP WITH TIME ZONE": "timestamp with time zone",
}
COLUMN_RE = re.compile(
    r"^(?P<name>\w+) (?P<type>VARCHAR\(\d+\)|TIMESTAMP WITH TIME ZONE|[A-Z]+)(?P<rest>.*)$"
)


@dataclass
class PlanColumn:
    name: str
    type: str  # information_schema spelling, e.g. "character varying(255)"
    default: str | None  # normalised (see normalise_default)
    not_null: bool
    unique: bool
    primary_key: bool
    references: tuple[str, str] | None  # (table, ON DELETE rule)


@dataclass
class PlanTable:
    name: str
    columns: list[PlanColumn] = field(default_factory=list)
    unique_sets: list[tuple[str, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class PlanIndex:
    name: str
    table: str
    method: str
    keys: str  # normalised (see normalise_keys)


def extract_sql_blocks(markdown: str) -> str:
    """The ```sql fenced blocks of the plan that hold CREATE statements, joined."""
    blocks = re.findall(r"```sql\n(.*?)```", markdown, re.S)
    return "\n".join(b for b in blocks if "CREATE " in b)


def normalise_default(expr: str | None) -> str | None:
    """``'{}'::jsonb`` -> ``'{}'``, ``NOW()`` -> ``now()``; None stays None."""
    if expr is None:
        return None
    return re.sub(r"::[\w ]+", "", expr.strip()).lower()


def normalise_keys(keys: str) -> str:
    """Index key text without casts or whitespace, lower-case."""
    return re.sub(r"\s+", "", re.sub(r"::\w+", "", keys)).lower()


def _column(line: str) -> PlanColumn:
    m = COLUMN_RE.match(line)
    if not m or not (m["type"] in TYPES or m["type"].startswith("VARCHAR")):
        raise ValueError(f"plan column line not understood: {line!r}")
    raw_type, rest = m["type"], m["rest"]
    varchar = re.fullmatch(r"VARCHAR\((\d+)\)", raw_type)
    col_type = f"character varying({varchar[1]})" if varchar else TYPES[raw_type]
    default = re.search(r"DEFAULT ('[^']*'|\w+\(\)|\w+)", rest)
    ref = re.search(r"REFERENCES (\w+)\(\w+\) ON DELETE (SET NULL|CASCADE)", rest)
    return PlanColumn(
        name=m["name"],
        type=col_type,
        default=normalise_default(default[1]) if default else None,
        not_null="NOT NULL" in rest,
        unique=" UNIQUE" in f" {rest}",
        primary_key="PRIMARY KEY" in rest,
        references=(ref[1], ref[2]) if ref else None,
    )


def parse(sql: str) -> tuple[dict[str, PlanTable], dict[str, PlanIndex]]:
    """Tables (with columns) and indexes named in the plan's SQL."""
    tables: dict[str, PlanTable] = {}
    for name, body in TABLE_RE.findall(sql):
        table = PlanTable(name)
        for raw in body.splitlines():
            line = raw.split("--")[0].strip().rstrip(",")
            if not line:
                continue
            unique = re.fullmatch(r"UNIQUE\((.*)\)", line)
            if unique:
                table.unique_sets.append(tuple(c.strip() for c in unique[1].split(",")))
            else:
                table.columns.append(_column(line))
        tables[name] = table
    indexes = {
        m[0]: PlanIndex(m[0], m[1], (m[2] or "btree").lower(), normalise_keys(m[3]))
        for m in INDEX_RE.findall(sql)
    }
    return tables, indexes


def load() -> tuple[dict[str, PlanTable], dict[str, PlanIndex]]:
    return parse(PLAN_SQL.read_text(encoding="utf-8"))
