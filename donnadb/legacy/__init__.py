"""The legacy JSON file store: reading and normalising it (reader, files, chats, users,
logs, normalise), loading it into PostgreSQL (importer), comparing (verify), writing it
back (export), reports of what was quarantined (report) and test data (fixtures)."""
