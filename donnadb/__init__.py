"""donnadb: deploy, migrate, back up and operate Donna's PostgreSQL."""

__version__ = "0.1.0"
