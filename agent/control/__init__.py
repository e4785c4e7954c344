"""The control API: wire protocol, Unix-socket server and the built-in ops."""
