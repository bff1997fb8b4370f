"""Day-to-day operation of the running database, as functions donnactl calls: status and
health checks (Nagios-style) with their Prometheus metrics and alert rules, partitions
and retention, slow and running queries, vacuum, role password rotation, GDPR user
erasure, the security check, an interactive shell as a role, and the structured event
log every command writes."""
