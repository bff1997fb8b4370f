from donnadb.ops.checks import Check, Severity, grade_high, grade_low, worst
from donnadb.ops.nagios import plugin_output, unreachable


def test_grade_high_is_inclusive_at_each_threshold():
    assert grade_high(74.9, 75, 90) is Severity.OK
    assert grade_high(75, 75, 90) is Severity.WARNING
    assert grade_high(90, 75, 90) is Severity.CRITICAL


def test_grade_low_is_inclusive_at_each_threshold():
    assert grade_low(95.1, 95, 85) is Severity.OK
    assert grade_low(95, 95, 85) is Severity.WARNING
    assert grade_low(85, 95, 85) is Severity.CRITICAL


def test_worst_of_checks_is_the_exit_code():
    checks = [Check("a", Severity.OK, 1, ""), Check("b", Severity.WARNING, 2, "")]
    assert worst(checks) == 1
    assert worst([]) is Severity.OK


def test_plugin_output_first_line_names_the_bad_checks_and_perfdata():
    checks = [Check("connections", Severity.OK, 3.5, "fine"),
              Check("bloat", Severity.CRITICAL, 70.0, "dead tuples 70%")]
    first = plugin_output(checks, Severity.CRITICAL, {"bloat": (30, 60)}).splitlines()[0]
    assert first.startswith("DONNADB CRITICAL - bloat: dead tuples 70%")
    assert "connections=3.5;;" in first and "bloat=70;30;60" in first
    assert unreachable("down").startswith("DONNADB CRITICAL - down")
