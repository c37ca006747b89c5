//! End-to-end scenarios live in `tests/`: they start the `rackwarden` binary as separate
//! processes (simulator and agent) and talk to them over loopback sockets only.
