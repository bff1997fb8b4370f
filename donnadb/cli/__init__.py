"""donnactl: the runbook CLI. Thin: parse, call the package, render."""
