"""The load test: Locust workload through the DAL, seeding, server-side figures and the
SLO gate (the ``[loadtest]`` extra; ``donnactl loadtest``)."""
