"""Ansible: the runner (ansible-runner, events into the operation log) and the deploy, handover, wipe and
burn-in drivers that act on servers through the playbooks under ``playbooks/``."""
