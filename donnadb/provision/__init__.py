"""The deploy: pyinfra @deploy functions, facts and operations that install and converge
PostgreSQL, its roles and passwords, the database and schema, PgBouncer, the shipped
code, backups and the ops jobs on a host (listed once in steps.py; settings from
group_data, validated in settings.py). Runs on the operator's machine through pyinfra."""
