"""The default inventory: deploy onto this machine (`make deploy`).

pyinfra's @local connector runs commands here directly, as the user running pyinfra
(root). Settings come from group_data/all.py.
"""

db_servers = ["@local"]
