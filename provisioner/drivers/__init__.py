"""Hardware interfaces. No Django imports in this package: drivers are plain Python objects
built from plain values (address, port, credentials), so playbook modules and the lab can use them too."""
