"""The virtual datacenter: simulated GPU servers with real BMC endpoints, firmware, disks and sshd."""
