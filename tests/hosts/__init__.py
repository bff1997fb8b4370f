"""Booted Debian 12 test hosts (systemd, sshd) and what runs on them; see machine.py."""
