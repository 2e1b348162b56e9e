"""The migration lint and the down_sql check through real processes: ``edgesync schema
add`` against ``edgesync serve``, installed and as the zipapp (which must carry sqlglot)."""

from __future__ import annotations

from pathlib import Path

from .support import Edgesync, Server


def one_error_line(result_stderr: str) -> str:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result_stderr
    return lines[0]


def test_schema_add_refuses_destructive_sql_unless_allowed(
    edgesync: Edgesync, server: Server, tmp_path: Path
) -> None:
    first = tmp_path / "001.sql"
    first.write_text("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);\n")
    edgesync.run_json("schema", "add", "--version", "1", "--up", str(first), server=server)

    wipe = tmp_path / "002.sql"
    wipe.write_text("-- start over\ndelete from kv;\n")
    refused = edgesync.run(
        "schema", "add", "--version", "2", "--up", str(wipe), server=server, check=False
    )
    assert refused.returncode != 0 and refused.stdout == ""
    assert "(DESTRUCTIVE_MIGRATION)" in one_error_line(refused.stderr)

    accepted = edgesync.run_json(
        "schema", "add", "--version", "2", "--up", str(wipe), "--allow-destructive",
        server=server,
    )  # fmt: skip
    assert accepted["version"] == 2


def test_schema_add_checks_the_down_sql(edgesync: Edgesync, server: Server, tmp_path: Path) -> None:
    up = tmp_path / "001.sql"
    up.write_text("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);\n")
    down = tmp_path / "001.down.sql"
    down.write_text("DROP TABLE nope;\n")
    refused = edgesync.run(
        "schema", "add", "--version", "1", "--up", str(up), "--down", str(down),
        server=server, check=False,
    )  # fmt: skip
    line = one_error_line(refused.stderr)
    assert "(INVALID_MIGRATION)" in line and "(down)" in line

    down.write_text("DROP TABLE kv;\n")
    accepted = edgesync.run_json(
        "schema", "add", "--version", "1", "--up", str(up), "--down", str(down),
        server=server,
    )  # fmt: skip
    assert accepted["down_sql"] == "DROP TABLE kv;\n"
