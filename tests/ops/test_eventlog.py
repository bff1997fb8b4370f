"""Structured JSON logs with a trace id, for every command."""

import json

from tests.support import full_disk


def test_each_command_logs_json_lines_with_one_trace_id(cli):
    done = cli("status", "--json", env={"DONNADB_TRACE_ID": "trace-abc"})
    assert done.returncode == 0
    lines = [json.loads(line) for line in cli.log_file.read_text().splitlines()]
    assert [line["message"] for line in lines] == ["command started", "command finished"]
    assert {line["trace_id"] for line in lines} == {"trace-abc"}
    assert lines[1]["context"]["exit_code"] == 0 and lines[1]["context"]["command"] == "status"
    # The end line is the audit record: who, what with which arguments, the result.
    assert lines[1]["context"]["user"] == "root" and lines[1]["context"]["params"]["json"]
    assert cli.log_file.stat().st_mode & 0o777 == 0o600


def test_failures_are_logged_with_the_traceback_but_shown_in_one_line(cli):
    done = cli("status", env={"DB_PORT": "1"})
    assert done.returncode == 4 and done.stderr.count("\n") == 1
    lines = [json.loads(line) for line in cli.log_file.read_text().splitlines()]
    failed = next(line for line in lines if line["message"].startswith("command failed"))
    assert "Traceback" in failed["exc"] and failed["level"] == "error"
    assert lines[-1]["context"]["exit_code"] == 4
    assert len({line["trace_id"] for line in lines}) == 1


def test_unwritable_log_file_does_not_break_commands(cli):
    done = cli("status", "--json", env={"OPS_LOG_FILE": "/proc/donnadb/nope.jsonl"})
    assert done.returncode == 0
    assert "structured log disabled: cannot write /proc/donnadb/nope.jsonl" in done.stderr


def test_a_full_disk_turns_the_log_off_in_one_line_and_leaves_no_torn_line(cli, tmp_path):
    # The older line ends just short of a page: the next line is half written, then the
    # disk is full.
    older = '{"message": "older", "pad": "' + "x" * 4000 + '"}\n'
    with full_disk(tmp_path, {"ops.jsonl": older}) as disk:
        log_file = disk / "ops.jsonl"
        done = cli("metrics", "textfile", str(tmp_path / "donnadb.prom"),
                   env={"OPS_LOG_FILE": str(log_file)})
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines() == [
            f"WARNING donnadb: structured log disabled: cannot write {log_file} "
            "(No space left on device)"]
        assert log_file.read_text() == older
