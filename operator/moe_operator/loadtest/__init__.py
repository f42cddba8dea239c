"""Load generation against live endpoints (``moectl replay``): measured, bounded, loopback or user-given URLs only."""
