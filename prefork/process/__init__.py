"""What the master and workers share: scoreboard, status page, sockets, systemd, privileges."""
